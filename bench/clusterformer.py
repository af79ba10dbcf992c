"""Cluster-Former benchmark: cost of long inputs, and QA over all HotpotQA paragraphs without windows.

Part ``timing``: one forward pass (batch 1, MiniLM-L6 sizes, random weights, 1 thread) of four
encoders at 512 / 1k / 2k / 4k / 8k tokens (``--lengths``), each setting in a fresh subprocess: wall time
(``--repeats`` >= 3 passes: the table gives the median and the spread (max - min) / median; the JSON also
keeps every pass and the fastest as ``seconds``) and peak memory (VmHWM, reset through
/proc/self/clear_refs after the model is built, minus the resident size then; on CUDA
``max_memory_allocated``).

* ``full (SDPA)``: softmax attention in every layer through ``scaled_dot_product_attention``;
  on CPU PyTorch picks its fused flash kernel, which tiles the scores: time grows as T^2, memory not;
* ``full (math)``: the same with the math kernel, which builds the (nh, T, T) scores as BERT does
  (run up to 4k tokens: at 8k one copy of the scores is 3.2 GB);
* ``sliding-window``: every layer a sliding-window layer (window 256, stride 128, 66-token prefix);
* ``cluster-former``: sliding-window layers with Cluster-Former layers at 2 and 4 (16 clusters,
  chunks of 256; centroids fitted on the input first, outside the timing).

Part ``qa``: answer EM/F1 on long HotpotQA inputs (../shared/data/hotpotqa_dev500_ircot: a question
and all ~10 of its paragraphs as one sequence, ~1,200 word pieces on average, up to ~3,000; split
by question id as the multi-hop issue: 291 train / 129 eval questions with extractive answers,
yes/no questions left out). Little training data exists, so every reader starts from one stage-1
reader: MiniLM trained for extractive QA on the train sides of XQuAD-en (876 SQuAD v1.1 questions) and
of HotpotQA's answers in their supporting paragraphs (same question-id rule, so no eval question is
seen), 2 epochs, windows of 384: the recipe of the plain reader of ``bench/blockskim.py``, whose model
``--stage1-model runs/blockskim/plain/model`` reuses. Each encoder is then fine-tuned on the first
``--train-questions`` HotpotQA train questions as long inputs (1 epoch) and evaluated on all 129 eval
questions:

* ``windows``: the plain reader, 384-token windows with stride 128 (and, for reference, the
  stage-1 reader without the long-input step);
* ``softmax``: full attention over the whole input (positions tiled from 512 to 4,096);
* ``cluster-former``: as in the timing part, centroids calibrated on 16 training inputs, refitted
  every 50 training forwards;
* ``sliding-window`` (``--encoders``, not run by default): the paper's local-only ablation.

    flock /tmp/reprlab-heavy.lock python bench/clusterformer.py --part timing   # ~5 min
    flock /tmp/reprlab-heavy.lock python bench/clusterformer.py --part qa   # stage 1 (~25 min) + 3 encoders (~40 min)
    python bench/clusterformer.py --part qa --stage1-model runs/blockskim/plain/model   # reuse stage 1 (~45 min)
    python bench/clusterformer.py --quick                                       # smoke run (256/512 tokens, 2 steps)
    python bench/clusterformer.py --part report --append                        # table + plot from the JSON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import common
from reprlab.io import atomic_write_json

SQUAD = common.data_path("squad_v1.1_dev_xquad_en", "xquad.en.json", check=False)
HOTPOT = common.data_path("hotpotqa_dev500_ircot", "dev_subsampled.jsonl", check=False)
KINDS = ("full (SDPA)", "full (math)", "sliding-window", "cluster-former")
LENGTHS = (512, 1024, 2048, 4096, 8192)
MATH_LIMIT = 4096
WINDOW, STRIDE, PREFIX, CLUSTERS, CLUSTER_LAYERS = 256, 128, 66, 16, (2, 4)


# ------------------------------------------------------------------------------------------------
# timing: one setting per subprocess


def encoder_for(kind: str, length: int):
    from reprlab.encoder import Encoder, EncoderConfig

    names = None
    if kind in ("sliding-window", "cluster-former"):
        names = ["sliding-window"] * 6
        if kind == "cluster-former":
            for i in CLUSTER_LAYERS:
                names[i] = "cluster-former"
    kwargs = dict(window=WINDOW, stride=STRIDE, global_prefix=PREFIX, num_clusters=CLUSTERS) if names else {}
    config = EncoderConfig.minilm_l6(max_position_embeddings=max(512, length), layer_attention=names,
                                     attention_kwargs=kwargs, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    return Encoder(config).eval()


def measure(kind: str, length: int, device: str, repeats: int) -> dict:
    """Time and peak memory of one forward pass of ``kind`` at ``length`` tokens (run in a subprocess)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from reprlab.nn.cluster import calibrate_centroids

    warnings.filterwarnings("ignore")
    dev = torch.device(device)
    enc = encoder_for(kind, length).to(dev)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 29000, (1, length), generator=g).to(dev)
    mask = torch.ones_like(ids)
    kernel = sdpa_kernel(SDPBackend.MATH) if kind == "full (math)" else contextlib.nullcontext()
    with torch.inference_mode(), kernel:
        calibrate_centroids(enc, [(ids, mask)], lambda m, b: m(*b))  # no-op without cluster layers
        enc(ids[:, :256], mask[:, :256])  # warm-up (kernels, allocator)
        times, peaks = [], []
        for _ in range(repeats):  # peak memory is reset before each pass, so the loop is this one's own
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            else:
                open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
                base = common.memory_bytes("VmRSS")
            t0 = time.perf_counter()
            out = enc(ids, mask).last_hidden_state
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            peaks.append((torch.cuda.max_memory_allocated() if dev.type == "cuda" else common.memory_bytes("VmHWM")) - base)
            del out
    timing = common.Timing.of(times)  # >= 3 passes
    return {"kind": kind, "tokens": length, "seconds": timing["min"], "median_s": timing["median"],
            "spread": timing["spread"], "passes": timing["passes"], "peak_mb": max(peaks) / 2**20}


def run_timing(args) -> list[dict]:
    rows = []
    for length in args.lengths:
        for kind in KINDS:
            if kind == "full (math)" and length > MATH_LIMIT:
                rows.append({"kind": kind, "tokens": length, "seconds": None, "peak_mb": None,
                             "note": f"not run: one copy of the scores is {12 * length * length * 4 / 2**30:.1f} GB"})
                continue
            cmd = [sys.executable, __file__, "--measure", kind, str(length), "--device", args.device,
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
                rows.append({"kind": kind, "tokens": length, "seconds": None, "peak_mb": None,
                             "note": f"failed: {why}"})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {kind:16s} {length:5d} tokens: "
                  + (f"{r['seconds']:.3f} s, {r['peak_mb']:.0f} MB" if r["seconds"] is not None else r["note"]),
                  flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# QA


def check_stage1(model: Path) -> Path:
    """A stage-1 reader given on the command line must come from the stage-1 recipe: the same data and split."""
    config = model.parent / "train_config.json"
    if not config.is_file():
        raise SystemExit(f"--stage1-model {model}: no {config.name} next to it, cannot check its recipe")
    extra = json.loads(config.read_text()).get("extra", {})
    data = sorted(Path(d).name for d in extra.get("data", []))
    want = sorted([SQUAD.name, HOTPOT.name])
    if data != want or extra.get("eval_fraction") != 0.3:
        raise SystemExit(f"--stage1-model {model}: trained on {data} with eval_fraction "
                         f"{extra.get('eval_fraction')}; stage 1 needs {want} with eval_fraction 0.3")
    return model


def run_qa(args) -> dict:
    from reprlab.qa.long_reader import (
        LongReaderConfig, LongReaderTrainingConfig, build_long_reader, evaluate_long_reader, load_long_hotpotqa,
        run_long_reader_training,
    )
    from reprlab.qa.reader import ReaderConfig
    from reprlab.qa.recipe import ReaderTrainingConfig, run_reader_training

    work = args.work_dir
    results: dict = {"stages": {}}
    t0 = time.perf_counter()
    squad_dir = work / "squad" / "model"
    if args.stage1_model:  # a reader trained with the same stage-1 recipe (e.g. bench/blockskim.py's plain reader)
        squad_dir = check_stage1(args.stage1_model)
        saved = squad_dir.parent / "eval.json"
        squad_metrics = json.loads(saved.read_text()) if saved.is_file() else None
    elif args.reuse and squad_dir.is_dir():
        check_stage1(squad_dir)  # an older run of this script may have used another stage-1 recipe
        saved = work / "squad" / "eval.json"
        squad_metrics = json.loads(saved.read_text()) if saved.is_file() else None
    else:
        cfg = ReaderTrainingConfig(
            output_dir=str(work / "squad"), data=[str(SQUAD), str(HOTPOT)], eval_fraction=0.3,
            reader=ReaderConfig(max_length=384, stride=128), epochs=args.squad_epochs, max_steps=args.squad_steps,
            batch_size=4 if args.quick else 16, lr=1e-4, seed=args.seed, device=args.device, evaluate=False,
            resume=(work / "squad" / "checkpoints").is_dir())  # an interrupted stage 1 continues
        run_reader_training(cfg)
        squad_metrics = None
    results["stages"]["squad"] = {"seconds": time.perf_counter() - t0, "model": str(squad_dir),
                                  "eval": next(iter(squad_metrics.values())) if squad_metrics else None}
    print(f"stage 1 (XQuAD + HotpotQA answers, train side): {results['stages']['squad']}", flush=True)
    data = load_long_hotpotqa(HOTPOT)
    eval_ex = data.eval[: args.eval_questions] if args.eval_questions else data.eval
    results["data"] = {"train_questions": len(data.train), "eval_questions": len(data.eval),
                       "used_train": min(args.train_questions or len(data.train), len(data.train)),
                       "used_eval": len(eval_ex), "skipped": data.skipped}
    rows = []
    # the stage-1 reader as it is, with windows: how much the long-input step adds
    cached = work / "stage1_long_eval.json"
    m = json.loads(cached.read_text()) if args.reuse and cached.is_file() else None
    if m is None or m.get("model") != str(squad_dir):
        base = build_long_reader(squad_dir, LongReaderConfig(attention="windows")).to(args.device)
        m = {**evaluate_long_reader(base, eval_ex), "model": str(squad_dir)}
        atomic_write_json(cached, m)
    rows.append({"reader": "windows (stage 1 only)", "train_seconds": 0.0, **m})
    print(f"  {rows[-1]['reader']}: F1 {m['f1']:.2f} EM {m['exact_match']:.2f}", flush=True)
    for name in args.encoders:
        out = work / name
        if args.reuse and (out / "eval.json").is_file():
            metrics = json.loads((out / "eval.json").read_text())
        else:
            cfg = LongReaderTrainingConfig(
                output_dir=str(out), data=str(HOTPOT), model=str(squad_dir),
                reader=LongReaderConfig(attention=name, window=WINDOW, stride=STRIDE, num_clusters=CLUSTERS,
                                        cluster_layers=list(CLUSTER_LAYERS)),
                max_train_examples=args.train_questions, max_eval_examples=args.eval_questions,
                epochs=1.0, max_steps=args.qa_steps, batch_size=2 if args.quick else 4,
                grad_accum=1 if args.quick else 4, lr=args.lr, seed=args.seed, device=args.device)
            metrics = run_long_reader_training(cfg).eval_metrics
        train_seconds = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["elapsed"]
        rows.append({"reader": name, "train_seconds": train_seconds, **metrics})
        print(f"  {name}: F1 {metrics['f1']:.2f} EM {metrics['exact_match']:.2f} "
              f"({metrics['seconds_per_question']:.2f} s/question)", flush=True)
    results["rows"] = rows
    results["seconds"] = time.perf_counter() - t0
    return results


# ------------------------------------------------------------------------------------------------
# report


def median_s(row: dict) -> float:
    """The median of a cell's passes (records older than 2026-12-04 kept only the fastest, ``seconds``)."""
    return row.get("median_s", row["seconds"])


def timing_table(rows: list[dict]) -> str:
    """Median seconds (spread) / peak MB per encoder and length."""
    lengths = sorted({r["tokens"] for r in rows})
    out = ["| encoder | " + " | ".join(f"{n} tok" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for kind in KINDS:
        cells = []
        for n in lengths:
            r = next((r for r in rows if r["kind"] == kind and r["tokens"] == n), None)
            ok = r is not None and r["seconds"] is not None
            spread = f" ({r['spread']:.0%})" if ok and "spread" in r else ""
            cells.append(f"{median_s(r):.2f} s{spread} / {r['peak_mb']:.0f} MB" if ok else "n/a")
        out.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def qa_table(qa: dict) -> str:
    out = ["| reader | windows / question | EM | F1 | s / question | train time |", "|---|---|---|---|---|---|"]
    for r in qa["rows"]:
        train = "-" if not r.get("train_seconds") else f"{r['train_seconds'] / 60:.1f} min"
        out.append(f"| {r['reader']} | {r['windows_per_question']:.2f} | {r['exact_match']:.2f} | {r['f1']:.2f} "
                   f"| {r['seconds_per_question']:.2f} | {train} |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'reprlab[plot]')", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, style in zip(KINDS, ("o-", "s--", "^-", "D-")):
        pts = sorted((r["tokens"], median_s(r), r["peak_mb"]) for r in rows if r["kind"] == kind and r["seconds"])
        if not pts:
            continue
        n, s, m = zip(*pts)
        axes[0].plot(n, s, style, label=kind)
        axes[1].plot(n, [max(x, 1.0) for x in m], style, label=kind)
    for ax, title in zip(axes, ("forward time (s, median of the passes)", "peak memory above the model (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens (batch 1)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle("MiniLM-L6 sizes, one forward pass")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def section(result: dict, png: Path) -> str:
    commands = [result[k] for k in ("timing_command", "qa_command") if result.get(k)]
    lines = ["## Cluster-Former: long inputs (`bench/clusterformer.py`)", "",
             f"Machine: {result['machine']} ({result.get('threads')} torch thread(s)); device {result['device']}; "
             f"date {result['date']}. Commands (each under `flock /tmp/reprlab-heavy.lock`):", "",
             *[f"    {c}" for c in commands], ""]
    if result.get("timing"):
        lines += ["One forward pass, batch 1, MiniLM-L6 sizes, time / peak memory above the built model "
                  "(fresh process per cell):", "", timing_table(result["timing"]), "",
                  f"![time and memory]({common.repo_relative(png)})", ""]
    if result.get("qa"):
        qa = result["qa"]
        d = qa["data"]
        lines += [f"HotpotQA, all paragraphs of a question as one input; eval side: {d['used_eval']} questions "
                  f"(yes/no questions left out: {d['skipped']['yes/no']} of 500); every reader started from the same "
                  "stage-1 reader (XQuAD-en + HotpotQA answers, train sides), then learned on "
                  f"{d['used_train']} of the {d['train_questions']} HotpotQA train questions (little data: "
                  "absolute scores are low and differences of a few points are within noise):", "",
                  qa_table(qa), ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[
        common.bench_options(threads=1, work_dir=str(common.REPO / "runs" / "clusterformer"))])
    parser.add_argument("--part", choices=["timing", "qa", "all", "report"], default="all")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per cell (>= 3)")
    parser.add_argument("--reuse", action="store_true", help="reuse trained models / eval.json in --work-dir")
    parser.add_argument("--encoders", nargs="+", default=["windows", "softmax", "cluster-former"],
                        choices=["windows", "softmax", "sliding-window", "cluster-former"])
    parser.add_argument("--squad-epochs", type=float, default=2.0)
    parser.add_argument("--stage1-model", type=Path, default=None,
                        help="skip stage 1: a reader folder trained with the same recipe (bench/blockskim.py's "
                             "plain reader, runs/blockskim/plain/model)")
    parser.add_argument("--squad-steps", type=int, default=None)
    parser.add_argument("--train-questions", type=int, default=120, help="HotpotQA train questions used (0 = all)")
    parser.add_argument("--eval-questions", type=int, default=None, help="first N eval questions (default all)")
    parser.add_argument("--qa-steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", dest="output", type=Path, help=argparse.SUPPRESS)  # the older name of --output
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "TOKENS"), help=argparse.SUPPRESS)
    args = common.parse(parser, argv)
    if args.quick and not args.measure:
        args.lengths = [256, 512]
        args.squad_steps, args.qa_steps, args.train_questions, args.eval_questions = 2, 1, 4, 4
    args.train_questions = args.train_questions or None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.device, args.repeats)))
        return
    logging.getLogger("reprlab").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="initialised fresh")
    path = common.result_path("clusterformer", args)
    result = {k: v for k, v in common.read_result(path).items() if k not in ("command", "machine", "date")}
    result.update(benchmark="clusterformer", device=args.device, threads=args.threads)
    if args.part in ("timing", "all"):
        print("timing:", flush=True)
        result["timing"] = run_timing(args)
        result["timing_command"] = common.command_line(argv)
    if args.part in ("qa", "all"):
        common.require(SQUAD, "XQuAD-en")
        common.require(HOTPOT, "HotpotQA")
        print("qa:", flush=True)
        result["qa"] = run_qa(args)
        result["qa_command"] = common.command_line(argv)
    result = common.write_result("clusterformer", result, args, argv)
    png = path.resolve().with_suffix(".png")
    if result.get("timing"):
        plot(result["timing"], png)
        print("\n" + timing_table(result["timing"]))
    if result.get("qa"):
        print("\n" + qa_table(result["qa"]))
    if args.append:
        common.append_benchmarks(section(result, png))


if __name__ == "__main__":
    main()
