"""What every bench script shares: where the data is, smoke-run subsamples, timings, result files.

* Data: :func:`data_root` is ``$REPRLAB_SHARED_DATA`` (default ``<repo>/../shared/data``, the folder
  described by its README); :func:`data_path` names a file under it and :func:`require` stops a run
  with a message naming the variable when something is missing.
* Options: :func:`bench_options` is the argparse parent of every script (``--quick``, ``--output``,
  ``--threads``, ``--device``, ``--append``, ``--work-dir``), so the same option means the same thing
  everywhere; :func:`parse` checks them.
* Smoke runs: :func:`subsample` (a few judged queries of a BEIR set, their documents and some others)
  and :func:`write_subsample` (the same as a BEIR folder, for recipes that read folders).
* Timing: :func:`timed` (at least 3 passes; median, min, max and spread) and :func:`timed_interleaved`
  (several contestants, alternating order); :func:`encode_seconds` times sentence encoders on the same
  texts; :func:`memory_bytes` reads this process's peak memory.
* Shared recipes: :func:`evaluate_dense` (a sentence encoder on a BEIR set, exact search) and
  :func:`distill_config` (the one distillation recipe of the three distillation scripts).
* Results: :func:`write_result` writes ``bench/results/<name>.json`` atomically with :func:`stamp` (the
  machine, the date and the exact command); :func:`append_benchmarks` appends a section to BENCHMARKS.md.

The scripts run from the repository root as ``python bench/<name>.py``; Python puts ``bench/`` on the
path, so they ``import common``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BENCHMARKS = REPO / "BENCHMARKS.md"
DATA_ENV = "REPRLAB_SHARED_DATA"
MIN_PASSES = 3

# ----------------------------------------------------------------------------- data


def data_root() -> Path:
    """``$REPRLAB_SHARED_DATA``, or ``<repo>/../shared/data`` when the variable is unset or empty."""
    return Path(os.environ.get(DATA_ENV) or REPO.parent / "shared" / "data")


def require(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` as a Path, or stop the run (exit status 1) with a message naming ``$REPRLAB_SHARED_DATA``."""
    path = Path(path)
    if not path.exists():
        where = os.environ.get(DATA_ENV)
        root = f"${DATA_ENV} = {where}" if where else f"${DATA_ENV} is unset, so the default {data_root()}"
        sys.exit(f"{what + ': ' if what else ''}{path} is missing. The benchmarks read real data under "
                 f"the shared data folder ({root}); set {DATA_ENV} to the folder that holds scifact/, "
                 "cranfield/, ... (see its README.md), or give the path on the command line.")
    return path


def data_path(*parts: str, check: bool = True) -> Path:
    """A path under :func:`data_root`; with ``check``, stop the run when it is missing (see :func:`require`).

    ``check=False`` is for argparse defaults, checked after parsing with :func:`require`, so that
    ``--help`` works without the data.
    """
    path = data_root().joinpath(*parts)
    return require(path) if check else path


# ----------------------------------------------------------------------------- options


def bench_options(*, device: str | None = "cpu", threads: int | None = 0, append: bool = True,
                  work_dir: str | None = None) -> argparse.ArgumentParser:
    """The argparse parent of a bench script: ``parents=[bench_options(...)]``.

    ``--quick`` (smoke run), ``--output`` (the result JSON) always; ``--threads`` (torch threads,
    default ``threads``; 0 = torch's default) unless ``threads`` is None; ``--device`` unless ``device``
    is None; ``--append`` (add the table to BENCHMARKS.md) with ``append``; ``--work-dir`` (models and
    scratch files; ``-quick`` is added to it in quick runs) when ``work_dir`` names a default.
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("options of every bench script")
    g.add_argument("--quick", action="store_true",
                   help="smoke run: a small subsample and a few steps, same code path; writes <name>-quick.json")
    g.add_argument("--output", type=Path, default=None,
                   help="result JSON file (default bench/results/<name>.json, <name>-quick.json with --quick)")
    if threads is not None:
        g.add_argument("--threads", type=int, default=threads, help=f"torch threads (0 = torch's default; "
                       f"default {threads}; 1 is steadiest on a shared machine)")
    p.set_defaults(_torch_threads=threads is not None)  # parse() sets them (a script may own --threads)
    if device is not None:
        g.add_argument("--device", choices=("cpu", "cuda"), default=device, help=f"default {device}")
    if append:
        g.add_argument("--append", action="store_true", help=f"append the table to {BENCHMARKS.name}")
    if work_dir is not None:
        g.add_argument("--work-dir", type=Path, default=Path(work_dir),
                       help=f"trained models and scratch files (default {work_dir}; -quick added with --quick)")
    return p


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the common options: ``--output`` must name a .json file (older commands used
    ``--output``/``--out`` for folders), timed passes (``--repeat``/``--repeats``) are at least 3, a quick
    run's ``--work-dir`` gets ``-quick`` appended, and :func:`bench_options`' ``--threads`` (when not 0)
    is applied to torch."""
    args = parser.parse_args(argv)
    if args.output is not None and args.output.suffix != ".json":
        parser.error(f"--output {args.output}: give the result JSON file (ending in .json); trained models and "
                     "other files go to --work-dir")
    for name in ("repeat", "repeats", "bm25_repeats"):  # the scripts' names for timed passes
        if getattr(args, name, MIN_PASSES) < MIN_PASSES:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: a timing takes at least {MIN_PASSES} "
                         "passes (median and spread)")
    if args.quick and getattr(args, "work_dir", None) is not None:
        args.work_dir = args.work_dir.with_name(args.work_dir.name + "-quick")
    if vars(args).pop("_torch_threads", False) and args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


# ----------------------------------------------------------------------------- smoke-run subsamples


def subsample(data, n_queries: int, n_extra_docs: int, seed: int = 0, keep_docs: Sequence[str] = ()):
    """A small :class:`~reprlab.text.beir.BeirDataset` for smoke runs.

    ``n_queries`` judged queries drawn at random (seeded), every corpus document judged for them, the
    documents in ``keep_docs``, and ``n_extra_docs`` other documents drawn at random.
    """
    from reprlab.text.beir import BeirDataset

    rng = np.random.default_rng(seed)
    qids = sorted(data.judged_queries())
    qids = [qids[i] for i in sorted(rng.choice(len(qids), size=min(n_queries, len(qids)), replace=False))]
    docs = {d for q in qids for d in data.qrels[q] if d in data.corpus} | {d for d in keep_docs if d in data.corpus}
    others = [d for d in sorted(data.corpus) if d not in docs]
    docs |= {others[i] for i in rng.choice(len(others), size=min(n_extra_docs, len(others)), replace=False)}
    return BeirDataset(corpus={d: data.corpus[d] for d in sorted(docs)},
                       queries={q: data.queries[q] for q in qids}, qrels={q: data.qrels[q] for q in qids})


def write_subsample(folder: str | os.PathLike, out: str | os.PathLike, n_queries: Mapping[str, int],
                    n_extra_docs: int, seed: int = 0) -> Path:
    """A small BEIR folder at ``out`` for recipes that read folders: ``n_queries[split]`` judged queries of
    each split of ``folder`` and one corpus holding all their documents plus ``n_extra_docs`` others."""
    from reprlab.text.beir import BeirDataset, load_beir, write_beir

    parts = {split: subsample(load_beir(folder, split=split), n, 0, seed) for split, n in n_queries.items()}
    judged = [d for part in parts.values() for d in part.corpus]
    full = load_beir(folder, split=next(iter(n_queries)))
    corpus = subsample(full, 0, n_extra_docs, seed, keep_docs=judged).corpus
    queries = {q: text for part in parts.values() for q, text in part.queries.items()}
    for split, part in parts.items():
        write_beir(out, BeirDataset(corpus, queries, part.qrels), split=split)
    return Path(out)


# ----------------------------------------------------------------------------- timing


class Timing(dict):
    """Seconds of repeated passes: ``{"median", "min", "max", "spread", "passes"}`` (JSON as it is), and
    ``"cpu"``, the same for this process's CPU seconds, when they were asked for.

    ``spread`` is (max - min) / median. ``result`` (not in the dict) is what the last pass returned.
    """

    result = None

    @classmethod
    def of(cls, passes: Sequence[float], result=None, cpu: Sequence[float] | None = None) -> "Timing":
        check_passes(len(passes))
        median = statistics.median(passes)
        timing = cls(median=median, min=min(passes), max=max(passes),
                     spread=(max(passes) - min(passes)) / median if median > 0 else 0.0, passes=list(passes))
        if cpu is not None:
            timing["cpu"] = dict(cls.of(cpu))
        timing.result = result
        return timing

    def rounded(self, digits: int = 4) -> dict:
        def r(v):
            return {k: r(x) for k, x in v.items()} if isinstance(v, dict) else (
                [round(x, digits) for x in v] if isinstance(v, list) else round(v, digits))

        return r(dict(self))


def check_passes(repeat: int) -> None:
    """Every timing takes at least 3 passes, so that it has a median and a spread."""
    if repeat < MIN_PASSES:
        raise ValueError(f"a timing takes at least {MIN_PASSES} passes (median and spread), got {repeat}")


def timed(fn: Callable, repeat: int = MIN_PASSES, warmup: int = 0, sync: Callable | None = None,
          cpu: bool = False) -> Timing:
    """Wall seconds of ``repeat`` (>= 3) calls of ``fn`` after ``warmup`` untimed ones.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before the clock starts and before it stops;
    ``cpu`` also records this process's CPU seconds (``time.process_time``) under ``"cpu"``.
    """
    return timed_interleaved({"": fn}, repeat, warmup, sync, cpu)[""]


def timed_interleaved(fns: Mapping, repeat: int = MIN_PASSES, warmup: int = 1, sync: Callable | None = None,
                      cpu: bool = False) -> dict:
    """:func:`timed` for several contestants ``{key: fn}``: pass r runs them all, in reverse order every
    other pass, so that a change of load on a shared machine hits every one alike; {key: Timing}."""
    check_passes(repeat)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    keys = list(fns)
    wall: dict = {k: [] for k in keys}
    cpu_s: dict = {k: [] for k in keys}
    results: dict = {}
    for r in range(repeat):
        for key in keys if r % 2 == 0 else keys[::-1]:
            if sync:
                sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            results[key] = fns[key]()
            if sync:
                sync()
            wall[key].append(time.perf_counter() - start)
            cpu_s[key].append(time.process_time() - cpu_start)
    return {k: Timing.of(wall[k], results[k], cpu_s[k] if cpu else None) for k in keys}


def memory_bytes(key: str = "VmHWM") -> int:
    """A memory figure of this process from /proc/self/status: ``VmHWM`` (peak resident size) or ``VmRSS``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def encode_seconds(models: Mapping, texts: list[str], batch_size: int, repeat: int = MIN_PASSES) -> dict[str, Timing]:
    """Time each sentence encoder encoding the same ``texts``: one warm-up batch each, then ``repeat``
    interleaved passes over all of them (see :func:`timed_interleaved`)."""
    for model in models.values():
        model.encode(texts[:batch_size], batch_size=batch_size, show_progress=False)
    return timed_interleaved({name: (lambda m=model: m.encode(texts, batch_size=batch_size, show_progress=False))
                              for name, model in models.items()}, repeat=repeat, warmup=0)


# ----------------------------------------------------------------------------- evaluation


def evaluate_dense(model, data, batch_size: int = 64, metrics: Sequence[str] = ("ndcg_cut_10",),
                   k: int = 100) -> dict[str, float]:
    """Metrics of a sentence encoder on a BEIR dataset: exact inner-product search over its corpus."""
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.retrieval.pipeline import evaluate_retriever

    retriever = DenseRetriever(model, batch_size=batch_size)
    retriever.index_corpus(data.corpus, show_progress=False)
    return evaluate_retriever(retriever, data, k=k, metrics=metrics)


def distill_config(method: str, student: str, output_dir: str | os.PathLike, corpus: str | os.PathLike, *,
                   steps: int, teacher: str = "minilm", batch_size: int = 32, lr: float = 1e-4,
                   max_length: int = 128, device: str = "cpu", seed: int = 0, max_texts: int | None = None,
                   ckd_weights: Sequence[float] = (100, 10, 100, 10), layer_map: list | None = None,
                   dev_fraction: float = 0.0):
    """The distillation recipe of ``distill.py``, ``distill_dev.py`` and ``distill_gpu.py``, so that the
    three train alike: unlabelled texts of ``corpus`` (a BEIR folder: corpus + queries, no qrels),
    warm-up 10%; KD = embedding cosine 1 + in-batch score KL 1 (scale 20); CKD = KD + relation terms
    ``ckd_weights`` (wr_pair, wr_triplet, ltr_pair, ltr_triplet), window 21, ``layer_map`` (None = the
    default map); SEED = queue 2048, temperatures 0.2 (student) / 0.01 (teacher). ``dev_fraction`` leaves the
    text of that hash dev slice of the queries out (``distill_dev.py`` scores on it)."""
    from reprlab.distill.ckd import CKDConfig
    from reprlab.distill.kd import KDConfig
    from reprlab.distill.recipe import DistillConfig
    from reprlab.distill.seed import SEEDConfig

    w = [float(x) for x in ckd_weights]
    return DistillConfig(
        method=method, corpus=[str(corpus)], output_dir=str(output_dir), teacher=teacher, student=student,
        max_length=max_length, max_steps=steps, batch_size=batch_size, lr=lr, warmup_ratio=0.1, device=device,
        seed=seed, max_texts=max_texts, dev_fraction=dev_fraction,
        kd=KDConfig(embedding="cosine", embedding_weight=1.0, score_weight=1.0, scale=20.0),
        ckd=CKDConfig(wr_pair=w[0], wr_triplet=w[1], ltr_pair=w[2], ltr_triplet=w[3], window=21, layer_map=layer_map),
        seed_method=SEEDConfig(queue_size=2048, student_temperature=0.2, teacher_temperature=0.01))


# ----------------------------------------------------------------------------- results


def settings(args: argparse.Namespace) -> dict:
    """``vars(args)`` for a result JSON: paths (alone or in lists) as strings."""
    def plain(v):
        if isinstance(v, Path):
            return str(v)
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v

    return {k: plain(v) for k, v in vars(args).items()}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, ``python bench/<script>.py ARGS`` (shell-quoted)."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join(["python", str(shown), *(sys.argv[1:] if argv is None else argv)])


def stamp(argv: Sequence[str] | None = None) -> dict:
    """``{"machine", "date", "command"}`` of this run, as :func:`write_result` adds them."""
    from reprlab.logs import machine_summary

    return {"machine": machine_summary(), "date": datetime.date.today().isoformat(), "command": command_line(argv)}


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` from the repository root (for links in BENCHMARKS.md), or absolute when it is elsewhere."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def result_path(name: str, args: argparse.Namespace | None = None) -> Path:
    """``--output``, or ``bench/results/<name>.json`` (``<name>-quick.json`` in a quick run)."""
    if args is not None and getattr(args, "output", None):
        return Path(args.output)
    quick = args is not None and getattr(args, "quick", False)
    return RESULTS / f"{name}{'-quick' if quick else ''}.json"


def read_result(path: str | os.PathLike) -> dict:
    """A result JSON written earlier (for scripts that merge parts into one file), or {} if there is none."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_result(name: str, record: dict, args: argparse.Namespace | None = None,
                 argv: Sequence[str] | None = None) -> dict:
    """Write ``record`` to :func:`result_path` atomically; returns the record as written.

    ``machine``, ``date`` and ``command`` (this run's exact command line; ``argv`` when main() was
    given one) are added in front, unless the record carries its own (e.g. the measuring machine's
    in a record evaluated elsewhere).
    """
    from reprlab.io import atomic_write_json

    path = result_path(name, args)
    record = {**stamp(argv), **record}
    atomic_write_json(path, record)
    print(f"wrote {path}", file=sys.stderr)
    return record


def append_benchmarks(section_markdown: str, path: str | os.PathLike | None = None) -> Path:
    """Append a section (markdown) to BENCHMARKS.md (or ``path``), creating the file with its header if needed."""
    path = Path(path or BENCHMARKS)
    if not path.exists():
        path.write_text("# reprlab benchmarks\n\nEach section gives the command, the machine and the date.\n",
                        encoding="utf-8")
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + section_markdown.strip("\n") + "\n")
    print(f"appended to {path}", file=sys.stderr)
    return path


def section(title: str, record: dict, body: str) -> str:
    """A BENCHMARKS.md section: the title, the command, the machine and the date of ``record``, then ``body``."""
    return "\n".join([f"## {title}", "", f"Command: `{record['command']}` (from the repo root). "
                      f"Machine: {record['machine']}. Date: {record['date']}.", "", body, ""])
