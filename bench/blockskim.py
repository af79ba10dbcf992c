"""Block Skim benchmark: the plain MiniLM reader vs Block Skim at several thresholds, in one run.

Data: ../shared/data/squad_v1.1_dev_xquad_en (XQuAD English = 1,190 SQuAD v1.1 dev questions over 48
articles) split by article with ``reprlab.text.splits`` (eval fraction 0.3: 876 train / 314
eval questions, 13 eval articles); the train side of HotpotQA answers found in their supporting
paragraphs (../shared/data/hotpotqa_dev500_ircot, same rule by question id) is added to training.
That is about 1,200 training questions, ~1% of SQuAD's 88k: absolute scores are far below a
SQuAD-trained reader's, and the comparison between the readers is what this measures.

All readers start from all-MiniLM-L6-v2 and train with the same recipe (``run_reader_training``,
same steps, seed and batches); each joint Block Skim reader (one per predictor input: the paper's
diagonal blocks, and diagonal blocks + question attention) adds skim predictors after
``--train-layers`` and the joint loss. The ``frozen-*`` variants (our extension) then train only the
predictors, for ``--frozen-epochs``, on the saved plain reader, whose weights stay as they are.
Evaluation: the eval split, one question at a time (all its
windows in one batch; max_length 384, stride 128), EM/F1 as the official SQuAD v1.1 script, wall
and CPU time per question (tokenization + model + decoding, one torch thread): the median of
``--repeats`` (>= 3) interleaved passes, with their min-max spread and the fastest pass; the JSON keeps every
pass. Block Skim is timed for every (skim layers, threshold) pair;
threshold 0 keeps every block. "slots" is the fraction of (token x layer) slots the model ran,
relative to the full sequence.

    flock /tmp/reprlab-heavy.lock python bench/blockskim.py        # full run: 3 + 2 trainings, 2 at a time
    python bench/blockskim.py --quick                               # smoke run: 2 steps, 8 questions
    python bench/blockskim.py --reuse --append                      # re-evaluate saved models, record

``--eval-set hotpotqa-all`` evaluates instead on the eval side of HotpotQA in the distractor setting:
each question over all of its ~10 paragraphs (~1,300 word pieces, about 5 windows), the input a reader
gets after retrieval, where most blocks cannot hold the answer. ``--hotpotqa-contexts all`` trains on
such inputs too (windows without the answer point at [CLS]); give such a run its own ``--work-dir``.

Train on a GPU, time here: ``--train-only --device cuda`` trains the same recipe (seed, steps, batches)
on a GPU; ``--export-to`` (bench/blockskim_transfer.py) carries the plain reader and the frozen-*
predictors back in a few files, and ``--import-from`` rebuilds the ``--work-dir`` for ``--reuse`` (the
result JSON's ``readers`` says where each reader was trained).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch

import blockskim_transfer
import common
from blockskim_report import (EVAL_SETS, VARIANTS, append_section, choose_threshold, chosen_key, plot,
                              predictor_table, table, tuning_table, variant_label)
from reprlab.io import atomic_write_json
from reprlab.qa.block_skim import BlockSkimConfig, BlockSkimReader
from reprlab.qa.reader import Reader, ReaderConfig
from reprlab.qa.recipe import ReaderTrainingConfig, run_block_skim_training, run_reader_training
from reprlab.qa.squad import HOTPOTQA_CONTEXTS, evaluate_examples, load_hotpotqa_answers, load_squad
from reprlab.text.splits import split
from reprlab.train.recipe import run_differences


def split_examples(examples, eval_fraction: float, dev_fraction: float = 0.0):
    """(train, eval) examples by the one hash rule of their group (article title or question id); the
    ``dev_fraction`` dev side is in neither (:func:`dev_examples`)."""
    parts = split(examples, key=lambda e: e.group, eval_fraction=eval_fraction, dev_fraction=dev_fraction)
    return parts.train, parts.eval

SQUAD = common.data_path("squad_v1.1_dev_xquad_en", "xquad.en.json", check=False)
HOTPOT = common.data_path("hotpotqa_dev500_ircot", "dev_subsampled.jsonl", check=False)


def _train_one(name: str, cfg: ReaderTrainingConfig, skim: BlockSkimConfig | None, threads: int) -> float:
    torch.set_num_threads(threads)
    logging.getLogger("reprlab").setLevel(logging.WARNING)
    print(f"training {name} on {cfg.train.device} ...", flush=True)
    t0 = time.perf_counter()
    if skim is None:
        run_reader_training(cfg)
    else:
        run_block_skim_training(cfg, skim)
    seconds = time.perf_counter() - t0
    atomic_write_json(Path(cfg.output_dir) / "train_time.json", {"seconds": seconds})
    return seconds


def train_models(args, work: Path, reader_cfg: ReaderConfig) -> dict[str, float]:
    """Train (or reuse) the plain reader and one Block Skim reader per ``--variants`` entry, two at a
    time in separate processes (one thread each) unless ``--sequential``; returns training wall times.

    Joint variants train from MiniLM alongside the plain reader; "frozen" variants then train only
    their predictors on the saved plain reader, for ``--frozen-epochs``."""
    data = [str(SQUAD)] + ([str(HOTPOT)] if args.hotpotqa else [])
    shared = dict(data=data, eval_fraction=args.eval_fraction, dev_fraction=args.dev_fraction,
                  hotpotqa_contexts=args.hotpotqa_contexts,
                  reader=reader_cfg, max_steps=args.max_steps,
                  batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device, evaluate=False,
                  checkpoint_every=args.checkpoint_every)
    phases: list[dict] = [{"plain": (None, dict(model="minilm", epochs=args.epochs))}, {}]
    for variant in args.variants:
        features, frozen, folder = VARIANTS[variant]
        skim = BlockSkimConfig(
            block_size=args.block_size, skim_layers=args.train_layers, keep_weight=args.keep_weight,
            skim_weight=args.skim_weight, features=features, predictor_lr_scale=args.predictor_lr_scale,
            freeze_reader=frozen)
        where = dict(model=str(work / "plain" / "model"), epochs=args.frozen_epochs) if frozen else \
            dict(model="minilm", epochs=args.epochs)
        phases[int(frozen)][folder] = (skim, where)
    times = {}
    for todo in phases:
        jobs = {}
        for name, (skim, where) in todo.items():
            out = work / name
            if args.reuse and (out / "model" / "model.safetensors").is_file():
                cfg = ReaderTrainingConfig(output_dir=str(out), block_skim=skim is not None,
                                           skim=skim or BlockSkimConfig(), **shared, **where)
                changed = run_differences(cfg, allowed=("resume",))
                if changed:  # a folder made by another recipe is never reused for this one
                    sys.exit(f"--reuse {out}: trained with other settings ({', '.join(changed)}); "
                             "give another --work-dir or drop --reuse")
                saved = out / "train_time.json"
                times[name] = json.loads(saved.read_text())["seconds"] if saved.is_file() else float("nan")
                continue
            cfg = ReaderTrainingConfig(output_dir=str(out), resume=(out / "checkpoints").is_dir(), **shared, **where)
            jobs[name] = (cfg, skim)
        times.update(_train_jobs(args, jobs))
    return times


def _train_jobs(args, jobs: dict) -> dict[str, float]:
    times = {}
    if args.sequential or len(jobs) < 2:
        for name, (cfg, skim) in jobs.items():
            times[name] = _train_one(name, cfg, skim, args.threads or torch.get_num_threads())
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
            futures = {name: pool.submit(_train_one, name, cfg, skim, 1) for name, (cfg, skim) in jobs.items()}
            times.update({name: f.result() for name, f in futures.items()})
    for name in jobs:
        print(f"trained {name} in {times[name] / 60:.1f} min", flush=True)
    return times


def predictor_diagnostics(folder: Path, variant: str, layers: list[int], examples, block_size: int,
                          batch: int = 32) -> list[dict]:
    """How well each trained skim predictor separates answer blocks from the others on ``examples``.

    Per layer: ROC AUC of P(keep) (answer blocks vs the rest; 0.5 = no better than chance), the mean
    P(keep) of each class, and the share of answer blocks. Threshold 0, so every layer sees the full
    sequence, as in training.
    """
    from reprlab.qa.block_skim import block_labels, context_blocks
    from reprlab.qa.training import collate_features

    skim = BlockSkimConfig(block_size=block_size, skim_layers=layers, threshold=0.0, features=VARIANTS[variant][0])
    model = BlockSkimReader.from_pretrained(folder, skim=skim).eval()
    feats = model.training_features(examples)
    probs: list[list[torch.Tensor]] = [[] for _ in layers]
    labels = []
    with torch.inference_mode():
        for i in range(0, len(feats), batch):
            b = collate_features(feats[i: i + batch], None, model.tokenizer.pad_id)
            out = model.skim_forward(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), b["context_mask"])
            _, block_pos = context_blocks(b["context_mask"].bool() & b["attention_mask"].bool(), block_size)
            lab = block_labels(block_pos, b["start_positions"], b["end_positions"])  # (B, nb)
            labels.append(lab[lab >= 0])
            for k, p in enumerate(out.keep_probs):
                probs[k].append(p[lab >= 0])
    y = torch.cat(labels).numpy()
    rows = []
    for layer, ps in zip(layers, probs):
        p = torch.cat(ps).numpy()
        pos, neg = p[y == 1], p[y == 0]
        ranks = np.argsort(np.argsort(np.concatenate([pos, neg]), kind="stable"), kind="stable") + 1
        auc = (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / max(len(pos) * len(neg), 1)
        rows.append({"reader": variant_label(variant), "layer": layer, "auc": round(float(auc), 3),
                     "p_keep_answer": round(float(pos.mean()), 4), "p_keep_other": round(float(neg.mean()), 4),
                     "answer_share": round(len(pos) / len(p), 3), "blocks": int(len(p))})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[
        common.bench_options(threads=1, work_dir=str(common.REPO / "runs" / "blockskim"))])
    parser.add_argument("--reuse", action="store_true", help="reuse trained models found in --work-dir")
    parser.add_argument("--hotpotqa", action=argparse.BooleanOptionalAction, default=True,
                        help="add the train side of the HotpotQA answers to training")
    parser.add_argument("--hotpotqa-contexts", choices=HOTPOTQA_CONTEXTS, default="supporting",
                        help="train on HotpotQA supporting paragraphs, or on each question over all its paragraphs")
    parser.add_argument("--eval-set", choices=tuple(EVAL_SETS), default="xquad",
                        help="xquad: the XQuAD-en article split; hotpotqa-all: HotpotQA eval questions over all "
                             "their paragraphs")
    parser.add_argument("--eval-fraction", type=float, default=0.3)
    parser.add_argument("--dev-fraction", type=float, default=0.15,
                        help="the hash rule's dev side: held out of training; each skim-layer set's threshold is "
                             "chosen on it (the fewest slots within 1 F1 of the plain reader); 0 = no choice")
    parser.add_argument("--report", choices=("grid", "chosen"), default="grid",
                        help="time every threshold on the eval side, or only the plain reader, threshold 0 and "
                             "the thresholds chosen on dev")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="Block Skim readers to train and compare: the predictor input, trained jointly with "
                             "the reader from MiniLM, or (frozen-*) alone on the trained plain reader")
    parser.add_argument("--frozen-epochs", type=float, default=10.0,
                        help="epochs of predictor-only training for the frozen-* variants")
    parser.add_argument("--train-layers", type=int, nargs="+", default=[0, 1, 2],
                        help="layers that get a skim predictor in training")
    parser.add_argument("--skim-layers", nargs="+", default=["1", "2", "1,2"],
                        help="skim-layer sets to evaluate, e.g. 1 0,2 (each a subset of --train-layers)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--keep-weight", type=float, default=5.0)
    parser.add_argument("--skim-weight", type=float, default=1.0)
    parser.add_argument("--predictor-lr-scale", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved timing passes (>= 3): median, min-max spread and fastest reported")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N eval questions")
    parser.add_argument("--sequential", action="store_true",
                        help="train the two readers one after the other (default: two processes, one thread each)")
    parser.add_argument("--train-only", action="store_true",
                        help="train (or resume) the readers and stop; evaluate later with --reuse on a quiet machine")
    parser.add_argument("--diagnose-only", action="store_true",
                        help="only measure the trained predictors' AUC on the eval split and add it to --output")
    parser.add_argument("--export-to", type=Path, metavar="DIR",
                        help="after training (or --reuse), write the plain reader as float16 shards + runs.tar.gz "
                             "(frozen-* predictors, configs) into DIR, to carry the runs to another machine")
    parser.add_argument("--shard-mib", type=float, default=15.0, help="largest --export-to shard, MiB")
    parser.add_argument("--import-from", type=Path, metavar="DIR",
                        help="rebuild --work-dir from an --export-to folder (float32 weights from the float16 "
                             "copy; data files checked by sha256) and stop; then evaluate with --reuse")
    parser.add_argument("--out", dest="output", type=Path, help=argparse.SUPPRESS)  # the older name of --output
    args = common.parse(parser, argv)
    if args.quick:
        args.max_steps, args.eval_limit, args.batch_size, args.max_length, args.stride = 2, 8, 4, 192, 64
        args.thresholds = [0.0, 0.5]
    if args.diagnose_only:
        args.reuse = True  # never train here
    args.skim_sets = [[int(x) for x in s.split(",")] for s in args.skim_layers]
    for s in args.skim_sets:
        if not set(s) <= set(args.train_layers):
            parser.error(f"skim layers {s} are not all in --train-layers {args.train_layers}")
    common.require(SQUAD, "XQuAD-en")
    common.require(HOTPOT, "HotpotQA")
    return args


def eval_examples(args) -> tuple[list, list, dict]:
    """The eval questions (never trained on, reported), the dev questions of the same set (never trained on,
    only for choosing thresholds) and the training question counts {squad, hotpotqa}."""
    fractions = dict(eval_fraction=args.eval_fraction, dev_fraction=args.dev_fraction)
    squad_parts = split(load_squad(SQUAD), key=lambda e: e.group, **fractions)
    hotpot_train = split(load_hotpotqa_answers(HOTPOT, args.hotpotqa_contexts), key=lambda e: e.group,
                         **fractions).train if args.hotpotqa else []
    parts = squad_parts if args.eval_set == "xquad" else split(
        load_hotpotqa_answers(HOTPOT, contexts="all"), key=lambda e: e.group, **fractions)
    examples, dev = parts.eval, parts.dev
    examples = examples[: args.eval_limit] if args.eval_limit else examples
    dev = dev[: args.eval_limit] if args.eval_limit else dev
    trained = {e.group for e in squad_parts.train + hotpot_train}
    assert not {e.group for e in examples + dev} & trained  # never trained on
    return examples, dev, {"squad": len(squad_parts.train), "hotpotqa": len(hotpot_train)}


def tune_thresholds(args, dev: list, plain, skimmers: dict) -> dict:
    """Each skim-layer set's threshold, chosen on the dev questions by :func:`choose_threshold` (EM/F1 and slots
    of one untimed pass per threshold); ``{}`` when there is no dev side."""
    if not dev:
        return {}
    with torch.inference_mode():
        plain_f1 = evaluate_examples(dev, plain.predict(dev))["f1"]
        rows, chosen = [], {}
        for (variant, layers), model in skimmers.items():
            mine = []
            for t in sorted(t for t in args.thresholds if t > 0):
                model.skim_config.threshold, stats = t, {}
                m = evaluate_examples(dev, model.predict(dev, stats=stats))
                slots = stats.get("layer_slots")
                mine.append({"reader": variant_label(variant), "skim_layers": list(layers), "threshold": t,
                             "exact_match": round(m["exact_match"], 2), "f1": round(m["f1"], 2),
                             "slots": round(sum(slots) / (len(slots) * slots[0]), 3) if slots else 1.0})
                print(f"  dev {variant} {layers} t={t} F1 {mine[-1]['f1']:.2f} slots {mine[-1]['slots']:.2f}",
                      flush=True)
            chosen[chosen_key(variant_label(variant), layers)] = choose_threshold(plain_f1, mine)
            rows += mine
    return {"questions": len(dev), "plain_f1": round(plain_f1, 2), "rows": rows, "chosen": chosen}


def diagnostics(args, examples) -> list[dict]:
    rows = []
    for variant in args.variants:
        rows += predictor_diagnostics(args.work_dir / VARIANTS[variant][2] / "model", variant,
                                      args.train_layers, examples, args.block_size)
    return rows


def reader_provenance(args) -> dict:
    """{run folder: where its reader was trained}: the training device of each run, and its ``imported.json``
    when bench/blockskim_transfer.py carried it here from another machine."""
    out = {}
    for name in ["plain"] + [VARIANTS[v][2] for v in args.variants]:
        run, record = args.work_dir / name, {}
        if (run / "train_config.json").is_file():
            record["device"] = json.loads((run / "train_config.json").read_text()).get("device")
        if (run / "imported.json").is_file():
            record["imported"] = json.loads((run / "imported.json").read_text())
        out[name] = record
    return out


def load_readers(args, device) -> tuple[Reader, dict, list]:
    """The plain reader, one Block Skim reader per (variant, skim-layer set), and every timed
    (variant, layers, threshold) configuration, the plain reader first."""
    plain = Reader.from_pretrained(args.work_dir / "plain" / "model").to(device).eval()
    skimmers = {}
    configs = [("plain", None, None)]
    for variant in args.variants:
        features, _, name = VARIANTS[variant]
        folder = args.work_dir / name / "model"
        for k, layers in enumerate(args.skim_sets):
            skim = BlockSkimConfig(block_size=args.block_size, skim_layers=layers, threshold=0.0, features=features)
            skimmers[(variant, tuple(layers))] = BlockSkimReader.from_pretrained(folder, skim=skim).to(device).eval()
            # threshold 0 skips nothing: once per variant is enough
            configs += [(variant, tuple(layers), t) for t in args.thresholds if t > 0 or k == 0]
    return plain, skimmers, configs


def time_readers(args, examples, plain, skimmers, configs) -> list[dict]:
    """Every configuration over all eval questions, ``--repeats`` interleaved passes (wall and CPU time:
    :func:`timing_columns`); EM/F1 and the share of (token x layer) slots run."""
    def predict(c):
        name, layers, threshold = c
        model = plain if name == "plain" else skimmers[(name, layers)]
        if name != "plain":
            model.skim_config.threshold = threshold
        stats: dict = {}
        return model.predict(examples, stats=stats), stats

    with torch.inference_mode():
        plain.predict(examples[:3]), next(iter(skimmers.values())).predict(examples[:3])  # warm-up
        timing = common.timed_interleaved({c: (lambda c=c: predict(c)) for c in configs}, args.repeats,
                                          warmup=0, cpu=True)
    rows = []
    for c in configs:
        (predictions, stats), t = timing[c].result, timing[c]
        m = evaluate_examples(examples, predictions)
        slots = stats.get("layer_slots")
        rows.append({
            "reader": "plain" if c[0] == "plain" else variant_label(c[0]),
            "skim_layers": list(c[1]) if c[1] else None, "threshold": c[2],
            "exact_match": round(m["exact_match"], 2), "f1": round(m["f1"], 2),
            "slots": round(sum(slots) / (len(slots) * slots[0]), 3) if slots else 1.0,
            "windows": stats.get("windows", 0), **timing_columns(t, timing[configs[0]], len(examples)),
        })
        print(f"  {c[0]} {c[1] or ''} t={c[2]} wall {t['median']:.1f}s (median; {t['min']:.1f}-{t['max']:.1f}) "
              f"cpu {t['cpu']['median']:.1f}s F1 {rows[-1]['f1']:.2f} slots {rows[-1]['slots']:.2f}", flush=True)
    return rows


def timing_columns(t: dict, base: dict, n_questions: int) -> dict:
    """A row's timing fields from its :class:`common.Timing` ``t`` and the plain reader's ``base`` (same passes).

    ``ms_per_question`` / ``cpu_ms_per_question``: the median pass, per question, with ``*_min`` / ``*_max``
    (the spread; ``spread`` = (max - min) / median); ``speedup`` / ``cpu_speedup``: the plain reader's median
    over this one's, with ``*_min`` / ``*_max`` the range of the per-pass ratios (pass r of both ran in the
    same interleaved sweep); ``fastest_*``: from the fastest passes; ``passes_s`` / ``cpu_passes_s``: every
    pass, seconds for all questions."""
    out = {}
    for prefix, mine, ref in (("", t, base), ("cpu_", t["cpu"], base["cpu"])):
        ratios = [b / x for b, x in zip(ref["passes"], mine["passes"])]
        out.update({
            f"{prefix}ms_per_question": round(1000 * mine["median"] / n_questions, 2),
            f"{prefix}ms_min": round(1000 * mine["min"] / n_questions, 2),
            f"{prefix}ms_max": round(1000 * mine["max"] / n_questions, 2),
            f"{prefix}spread": round(mine["spread"], 3),
            f"{prefix}speedup": round(ref["median"] / mine["median"], 3),
            f"{prefix}speedup_min": round(min(ratios), 3), f"{prefix}speedup_max": round(max(ratios), 3),
            f"{prefix}fastest_ms_per_question": round(1000 * mine["min"] / n_questions, 2),
            f"{prefix}fastest_speedup": round(ref["min"] / mine["min"], 3),
            f"{prefix}passes_s": [round(x, 4) for x in mine["passes"]],
        })
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.getLogger("reprlab").setLevel(logging.WARNING)
    out = common.result_path("blockskim", args)
    if args.import_from:
        blockskim_transfer.import_runs(args.import_from, args.work_dir)
        return
    t_start = time.perf_counter()
    train_times = train_models(args, args.work_dir, ReaderConfig(max_length=args.max_length, stride=args.stride))
    if args.export_to:
        blockskim_transfer.export_runs(args.work_dir, args.export_to, args.shard_mib)
    if args.train_only:
        for name, seconds in train_times.items():  # reused readers report their saved time (nan if none)
            print(f"{name}: {seconds / 60:.1f} min of training")
        return
    examples, dev, train_questions = eval_examples(args)
    if args.diagnose_only:
        if not out.is_file():
            sys.exit(f"--diagnose-only adds to an earlier run's result, and there is none at {out}")
        result = common.read_result(out)
        result["predictors"] = diagnostics(args, examples)
        result = common.write_result("blockskim", result, args, argv)  # keeps the measuring run's command
    else:
        plain, skimmers, configs = load_readers(args, torch.device(args.device))
        tuning = tune_thresholds(args, dev, plain, skimmers)
        if args.report == "chosen":
            configs = [c for c in configs if c[0] == "plain" or c[2] == 0
                       or tuning["chosen"][chosen_key(variant_label(c[0]), c[1])] == c[2]]
        rows = time_readers(args, examples, plain, skimmers, configs)
        plain_f1 = rows[0]["f1"]
        chosen = [r for r in rows[1:] if tuning and r["threshold"] > 0
                  and tuning["chosen"][chosen_key(r["reader"], r["skim_layers"])] == r["threshold"]]
        result = common.write_result("blockskim", {
            "tuning": tuning, "chosen_rows": chosen,
            "goal_met_at_chosen": [r for r in chosen if r["speedup"] >= 1.5 and r["f1"] >= plain_f1 - 1.0],
            "device": args.device, "readers": reader_provenance(args),
            "timing": f"median of {args.repeats} interleaved passes; min-max spread, per-pass speedup range and "
                      "fastest pass beside it; every pass in passes_s / cpu_passes_s (seconds, all questions)",
            "train_questions": train_questions, "eval_set": args.eval_set,
            "eval_questions": len(examples), "eval_articles": len({e.group for e in examples}),
            "eval_tokens_per_question": round(sum(len(x.ids) for x in plain.tokenizer.encode_raw(
                [e.context for e in examples])) / len(examples), 1),
            "settings": common.settings(args),
            "train_minutes": {k: round(v / 60, 2) for k, v in train_times.items()},
            "total_minutes": round((time.perf_counter() - t_start) / 60, 2), "rows": rows,
            "goal_met_by": [r for r in rows[1:] if r["speedup"] >= 1.5 and r["f1"] >= plain_f1 - 1.0],
            "goal_met_by_cpu_time": [r for r in rows[1:] if r["cpu_speedup"] >= 1.5 and r["f1"] >= plain_f1 - 1.0],
            "predictors": diagnostics(args, examples)}, args, argv)
        print(table(result))
        if tuning:
            print(tuning_table(tuning))
        plot(result, out.with_suffix(".png"))
    print(predictor_table(result))
    if args.append:
        append_section(result, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
