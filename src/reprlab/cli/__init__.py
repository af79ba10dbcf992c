"""The ``reprlab`` command.

    reprlab demo [--data BEIR_DIR]
    reprlab index --corpus DIR --model minilm --out INDEX_DIR [--factory STR | --binary BITS]
    reprlab index --multihop --data HOTPOT.jsonl --model M --out INDEX_DIR
    reprlab search --index INDEX_DIR "query text" [-k 10] [--multihop --beam 10]
    reprlab evaluate --data BEIR_DIR --split test --retriever minilm|bm25|hybrid|MODEL_DIR [--json]
    reprlab evaluate --multihop --data HOTPOT.jsonl --retriever bm25|minilm|MODEL_DIR [--json]
    reprlab mine --data BEIR_DIR --retriever bm25 --out NEGATIVES.jsonl
    reprlab answer --model READER_DIR --question "..." (--context TEXT | --index INDEX_DIR)
    reprlab score-passages --reader READER_DIR --data QA_FILE --out SCORES.jsonl [--retriever bm25]
    reprlab model-info tiny|minilm_l6|CONFIG.json|MODEL_DIR|minilm [--seq-len 512] [--attention NAME]
    reprlab pmi-vocab --corpus FILE|DIR --out VOCAB.json
    reprlab kg-eval --task link|category|relation --kg DIR --model DIR   (JAKET's three KG tasks)
    reprlab recommend --model DR_MODEL_DIR --user ID [-k 10]
    reprlab analyze cka --model A [--model B] --data DIR --out OUT_DIR [--batch-size 256]
    reprlab serve --index INDEX_DIR [--multihop-index DIR] [--reader DIR] [--backend onnx] [--port 8000]
    reprlab export onnx --model MODEL_DIR --out DIR [--int8]
    reprlab train|pretrain|distill|compress RECIPE --out RUN_DIR ...   (every registered recipe)

The recipe subcommands are built from the recipe registry (:mod:`reprlab.recipes`) by one mechanism
(:mod:`reprlab.cli.options`); choices come from the registries (attention variants, retrievers,
masking schemes, ...), never from lists copied here. Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from reprlab.cli.options import explain
from reprlab.errors import ConfigError, ReprlabError

logger = logging.getLogger("reprlab")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from reprlab.cli import analysis, kg, models, qa, reader_distill, recipes, recsys, search, serve

    parser = ArgumentParser(prog="reprlab", description="Learn, compress, search and serve text representations "
                            "(ICLR 2021 methods on one encoder). `reprlab COMMAND --help` lists a command's options.",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    search.add_commands(sub)
    qa.add_commands(sub)
    reader_distill.add_commands(sub)
    models.add_commands(sub)
    kg.add_commands(sub)
    analysis.add_commands(sub)
    serve.add_commands(sub)
    recipes.add_commands(sub)
    recsys.add_commands(sub)
    return parser


def _command(args) -> str:
    return " ".join(x for x in (args.command, getattr(args, "recipe", None)) if x)


def _flag_of(parser: argparse.ArgumentParser, args, dest: str | None) -> str | None:
    """The option string of ``dest`` in the (sub)command that ran, e.g. ``--batch-size`` for ``batch_size``."""
    names = [getattr(args, "command", None), getattr(args, "recipe", None)]
    while parser is not None and dest:
        found = next((a for a in parser._actions if a.dest == dest and a.option_strings), None)
        if found is not None:
            return max(found.option_strings, key=len)
        subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = names.pop(0) if names else None
        parser = subs.choices.get(name) if subs is not None and name else None
    return None


def _config_message(parser, args, exc: ConfigError) -> str:
    options = getattr(args, "options", None)
    if options is None and (flag := _flag_of(parser, args, exc.field)):
        return f"{flag}: {exc.detail}"
    return explain(options, exc)


def main(argv: list[str] | None = None) -> int:
    from reprlab.logs import setup_cli_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_cli_logging(logging.WARNING if args.quiet or getattr(args, "json", False) else logging.INFO)
    where = f"reprlab {_command(args)}"
    try:
        args.func(args)
    except ConfigError as exc:
        print(f"{where}: error: {_config_message(parser, args, exc)}", file=sys.stderr)
        return 2
    except ReprlabError as exc:
        print(f"{where}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"{where}: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `reprlab model-info minilm | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # the last resort: one line, a traceback only when asked for
        if args.debug or os.environ.get("REPRLAB_DEBUG"):
            raise
        print(f"{where}: internal error: {type(exc).__name__}: {exc} (please report it; --debug or "
              "REPRLAB_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    return 0
