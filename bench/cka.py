"""CKA on width/depth/data families of ResNets on Fashion-MNIST (Nguyen, Raghu & Kornblith, ICLR 2021).

Trains CIFAR-style ResNets (``reprlab train image-classifier``) on Fashion-MNIST along three axes,
then for each model computes, on the first ``--cka-examples`` test images, the layer x layer minibatch
CKA (``reprlab analyze cka``), the first principal component's share of each layer's variance, the
block structure (runs of consecutive layers with pairwise CKA >= ``--threshold``), and test accuracy on
all 10k test images. For models trained with two seeds: the CKA across seeds, layer by layer. For the
largest models: a linear probe per layer, and the test accuracy when one residual block is deleted.

The paper's findings this checks: (1) a block structure appears as capacity grows relative to the
data (wider, deeper, or less data); (2) it coincides with a dominant first principal component;
(3) inside the block different seeds disagree, outside they agree; (4) block layers can be deleted
(or read by a probe) at little cost. Beyond the paper (``--text``): the same analysis of MiniLM and
of fine-tuned text encoders (``--text-models``) on SciFact abstracts.

Peer: ``ckatorch`` (PyPI, a PyTorch CKA library) computes the same layer x layer minibatch CKA on the
same activations; values must agree and the time is compared (median of 3 passes).

The CPU grid (the recorded run; 2 cores) cuts the paper's: 14 x 14 inputs (``pool_input=2``), 1/16 of
the training set for the width and depth axes, a fixed budget of 350 optimizer steps of 128, widths
x0.5 to x8 at depth 8, depths 8 to 56 at width x1, data sizes full, 1/4, 1/16 at R8 x2 with the same
steps (so the larger sets get fewer epochs), 2 seeds for R8 x1, x4, x8 and R44 x1, and CKA on 2,048
test images; the grid is in order of priority (a ``--train-budget-min`` cut drops its tail and the
result lists the models cut). ``--text`` (on by default) analyses MiniLM on 1,024 SciFact abstracts
and compares it with ``--text-models`` and with a DPR fine-tune of it on SciFact's train queries
(``--text-dpr-epochs``, trained here). ``--grid gpu`` is closer to the paper's and meant for one
GPU (not run so far): 28 x 28 inputs, 2,500 steps of 128; R26 at widths x1-x8 (2 seeds each); width
x1 at depths 8-56; R26 x4 on full, 1/4 and 1/16 of the data. Both cut the paper's CIFAR-10, its widths
to x10, depths to 110 and 300 epochs. ``--train-budget-min`` starts no new training after a time (the
grid is in order of priority) and lists the models cut; ``--shard I/N`` trains a share of the grid
(parallel processes) for a later run to reuse.

    # the recorded CPU run (2026-12-05), split into lock holds of < 20 minutes; each run reuses the models
    # the earlier ones finished in --work-dir, --train-only trains and stops
    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/cka.py --threads 2 --train-only --no-text
    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/cka.py --threads 2 --train-only
    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/cka.py --threads 2 --text-dpr-epochs 3 \
        --text-models /tmp/reprlab-bench-cka/text/dpr-e1/model
    python bench/cka.py --quick                                                    # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import common
import cka_parts as parts


@dataclass(frozen=True)
class Spec:
    depth: int
    width: float
    fraction: float
    seed: int = 0
    axis: str = ""

    @property
    def name(self) -> str:
        return f"r{self.depth}-x{self.width:g}-f{self.fraction:g}-s{self.seed}"

    @property
    def family(self) -> str:
        return f"R{self.depth} x{self.width:g}, {parts.fraction_label(self.fraction)}"


def grid(kind: str, quick: bool) -> tuple[list[Spec], dict]:
    """The models to train and the training settings."""
    if quick:
        specs = [Spec(8, 0.5, 1 / 64, 0, "width"), Spec(8, 1, 1 / 64, 0, "width"), Spec(8, 1, 1 / 64, 1, "width"),
                 Spec(14, 0.5, 1 / 64, 0, "depth")]
        return specs, dict(steps=12, batch_size=64, pool_input=2, reference=(8, 1 / 64))
    if kind == "gpu":
        # sized to a few minutes of one H200 (see the module docstring): 28 x 28 inputs, R26 at x1-x8,
        # x1 at depths 8-56, R26 x4 on 1/4 and 1/16 of the data; 2 seeds where the findings need them
        w = [Spec(26, x, 1.0, s, "width") for s in (0, 1) for x in (8, 4, 1, 2)]
        d = [Spec(n, 1, 1.0, 0, "depth") for n in (56, 8, 38, 14)] + [Spec(56, 1, 1.0, 1, "depth")]
        f = [Spec(26, 4, fr, s, "data") for s in (0, 1) for fr in (1 / 16, 1 / 4)]
        return w + d + f, dict(steps=2500, batch_size=128, pool_input=1, reference=(26, 1.0))
    # in order of priority (a --train-budget-min cut drops the last ones): the depth axis and its second
    # seed first, then the width axis, then the data axis
    first = [Spec(8, 1, 1 / 16, 0, "width"), Spec(8, 2, 1 / 16, 0, "width"), Spec(20, 1, 1 / 16, 0, "depth"),
             Spec(44, 1, 1 / 16, 0, "depth"), Spec(44, 1, 1 / 16, 1, "depth"), Spec(8, 1, 1 / 16, 1, "width"),
             Spec(8, 0.5, 1 / 16, 0, "width")]
    later = [Spec(32, 1, 1 / 16, 0, "depth"), Spec(8, 2, 1.0, 0, "data"), Spec(8, 2, 1 / 4, 0, "data")]
    # added on 2026-12-05 (the first run cut them): the width axis to x4 and x8 with a second seed each, then depth 56
    wide = [Spec(8, 4, 1 / 16, 0, "width"), Spec(8, 8, 1 / 16, 0, "width"), Spec(8, 8, 1 / 16, 1, "width"),
            Spec(8, 4, 1 / 16, 1, "width"), Spec(56, 1, 1 / 16, 0, "depth")]
    # added later on 2026-12-05: a second seed for R56, a wide net deeper than R8 (R20 x4, 2 seeds; its width axis
    # is R20 x1 of the depth axis and R20 x4), then the paper's deepest (110)
    deep = [Spec(56, 1, 1 / 16, 1, "depth"), Spec(20, 4, 1 / 16, 0, "wide-deep"), Spec(20, 4, 1 / 16, 1, "wide-deep"),
            Spec(110, 1, 1 / 16, 0, "depth")]
    return first + later + wide + deep, dict(steps=350, batch_size=128, pool_input=2, reference=(8, 1 / 16))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[
        common.bench_options(work_dir="/tmp/reprlab-bench-cka")])
    p.add_argument("--train-data", type=Path, default=common.data_path("fashion_mnist_train", check=False))
    p.add_argument("--test-data", type=Path, default=common.data_path("fashion_mnist_test", check=False))
    p.add_argument("--grid", choices=("cpu", "gpu"), default="cpu", help="the CPU grid (recorded) or the paper-sized one")
    p.add_argument("--cka-examples", type=int, default=2048, help="test images the CKA is computed on")
    p.add_argument("--cka-batch", type=int, default=256, help="minibatch of the HSIC estimates")
    p.add_argument("--threshold", type=float, default=0.9, help="CKA above which consecutive layers form a block")
    p.add_argument("--text", action=argparse.BooleanOptionalAction, default=True, help="the SciFact text part")
    p.add_argument("--text-models", nargs="*", default=[], help="fine-tuned text encoders compared with MiniLM")
    p.add_argument("--text-examples", type=int, default=1024, help="SciFact abstracts the text CKA reads")
    p.add_argument("--text-dpr-epochs", type=float, default=1.0, help="also fine-tune MiniLM with `reprlab train dpr` "
                   "on SciFact's train queries for this many epochs (in WORK_DIR/text; reused when done) and compare "
                   "it with MiniLM (0: no fine-tune)")
    p.add_argument("--text-ance-epochs", type=float, default=0.0, help="also fine-tune MiniLM with `reprlab train "
                   "ance` on SciFact's train queries for this many epochs (in WORK_DIR/text; reused when done) and "
                   "compare it with MiniLM (0: none)")
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="time ckatorch on the same work")
    p.add_argument("--peer-model", default="r20-x1-f0.0625-s0", help="the model whose block outputs the ckatorch "
                   "comparison reads (default: R20 x1 of the CPU grid; the widest model when it is not in the grid)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per model (default: the grid's)")
    p.add_argument("--shard", default=None, help="I/N: only train models I, I+N, ... of the grid, then stop (parallel "
                   "training; a run without --shard reuses the trained models)")
    p.add_argument("--train-budget-min", type=float, default=None, help="start no new training after this many "
                   "minutes; the models left untrained are listed as cut in the result")
    p.add_argument("--train-only", action="store_true", help="train (or reuse) the grid's models and, with --text, "
                   "the DPR fine-tune, then stop: a later run reuses them (split a long run into shorter ones)")
    p.add_argument("--checkpoint-minutes", type=float, default=2.0, help="minutes between checkpoints of a model "
                   "being trained: a run stopped mid-model resumes it from there")
    args = common.parse(p, argv)
    if args.quick:
        args.cka_examples, args.cka_batch, args.text_examples = 256, 64, 128
    return args


def train_models(args, specs: list[Spec], settings: dict) -> dict[str, dict]:
    """Train (or reuse, when its results.json exists) every model of the grid; name -> record."""
    from reprlab.analysis.image_classifier import ImageClassifierConfig, run_image_classifier

    records, started = {}, time.time()
    for i, spec in enumerate(specs):
        out = args.work_dir / "models" / spec.name
        done = out / "results.json"
        if not done.is_file() and args.train_budget_min is not None and time.time() - started > 60 * args.train_budget_min:
            print(f"[{i + 1}/{len(specs)}] {spec.name}: cut (training budget of {args.train_budget_min} min spent)",
                  flush=True)
            continue
        if not done.is_file():
            config = ImageClassifierConfig(
                output_dir=str(out), data=str(args.train_data), test_data=str(args.test_data), depth=spec.depth,
                width=spec.width, pool_input=settings["pool_input"], train_fraction=spec.fraction, data_seed=0,
                max_steps=settings["steps"], batch_size=settings["batch_size"], seed=spec.seed, device=args.device,
                checkpoint_minutes=args.checkpoint_minutes, keep_checkpoints=1, resume=(out / "checkpoints").is_dir())
            t0 = time.time()
            run_image_classifier(config)
            results = json.loads(done.read_text())
            results["train_seconds"] = round(time.time() - t0, 1)
            done.write_text(json.dumps(results))
        results = json.loads(done.read_text())
        records[spec.name] = {"name": spec.name, "depth": spec.depth, "width": spec.width, "fraction": spec.fraction,
                              "seed": spec.seed, "axis": spec.axis, "family": spec.family, "model": str(out / "model"),
                              **results}
        print(f"[{i + 1}/{len(specs)}] {spec.name}: test accuracy {results['test_accuracy']:.4f} "
              f"({results.get('train_seconds', '?')} s)", flush=True)
    return records


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()
    common.require(args.train_data, "the Fashion-MNIST training set")
    common.require(args.test_data, "the Fashion-MNIST test set")
    specs, settings = grid(args.grid, args.quick)
    if args.steps:
        settings["steps"] = args.steps
    if args.shard or args.train_only:
        i, n = (int(v) for v in args.shard.split("/")) if args.shard else (0, 1)
        train_models(args, specs[i::n], settings)
        if args.text and args.train_only:
            parts.text_finetunes(args)
        return {}
    records = train_models(args, specs, settings)
    cut = [s.name for s in specs if s.name not in records]
    from reprlab.text.images import load_fashion_mnist

    test_x, test_y = load_fashion_mnist(args.test_data, "test")
    train_x, train_y = load_fashion_mnist(args.train_data, "train")
    seeds = parts.analyse_models(records, test_x[: args.cka_examples], args)
    largest = [n for n in (parts.largest(records, axis) for axis in ("width", "depth", "wide-deep")) if n]
    errors = {}
    for name in largest:
        records[name]["probes"] = parts.guarded(errors, f"probes {name}", parts.layer_probes, records[name], train_x,
                                                train_y, test_x, test_y, args)
        records[name]["deletion"] = parts.guarded(errors, f"deletion {name}", parts.block_deletion, records[name],
                                                  test_x, test_y, args) or []
    text = (parts.guarded(errors, "text", parts.text_part, args) or []) if args.text else []
    peer_model = records.get(args.peer_model) or (records[largest[0]] if largest else None)
    peer = parts.guarded(errors, "peer", parts.peer_comparison, peer_model, test_x, args) \
        if args.peer and peer_model else None
    findings = parts.findings(records, seeds)
    figures = parts.guarded(errors, "plots", parts.plots, records, seeds, text, args, settings) or []
    table = parts.markdown(records, seeds, text, peer, findings, settings, args)
    if cut:
        table += f"\n\nNot trained (training budget spent): {', '.join(cut)}."
    print(table)
    record = common.write_result("cka", {
        "benchmark": "cka", "grid": args.grid, "settings": settings, "args": common.settings(args),
        "torch_threads": torch.get_num_threads(), "models": list(records.values()), "cross_seed": seeds,
        "text": text, "peer": peer, "findings": findings, "figures": figures, "table": table,
        "cut_for_time": cut, "errors": errors,
        "wall_s": round(time.time() - started, 1)}, args, argv)
    if args.append:
        common.append_benchmarks(common.section("CKA: wide vs deep ResNets on Fashion-MNIST (`bench/cka.py`)",
                                                record, table))
    return record


if __name__ == "__main__":
    np.set_printoptions(precision=3, suppress=True)
    main()
