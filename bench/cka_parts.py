"""The analyses of ``bench/cka.py`` (one function per part): CKA per model and across seeds, probes, block
deletion, the text part, the ckatorch comparison, the findings, the figures and the table."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import common

RESULTS = common.RESULTS


def fraction_label(fraction: float) -> str:
    return "full data" if fraction == 1 else f"1/{round(1 / fraction)} data"


def largest(records: dict, axis: str) -> str | None:
    """The seed-0 model of ``axis`` with the most parameters' worth of width x depth."""
    cands = [r for r in records.values() if r["axis"] == axis and r["seed"] == 0]
    return max(cands, key=lambda r: (r["width"] ** 2 * r["depth"], r["depth"]))["name"] if cands else None


def _load(record, device: str = "cpu"):
    from reprlab.analysis.cka_report import load_model

    loaded = load_model(record["model"])
    loaded.module.to(device)
    return loaded


def guarded(errors: dict, what: str, fn, *args):
    """``fn(*args)``, or None with the error recorded under ``what`` (one failed analysis keeps the others)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the result, the run goes on
        errors[what] = f"{type(exc).__name__}: {exc}"
        print(f"{what} failed: {errors[what]}", flush=True)
        return None


def _blocks_of(matrix, threshold):
    from reprlab.analysis.cka import find_blocks

    return [b.to_dict() for b in find_blocks(matrix, threshold, 3)]


# ----------------------------------------------------------------------------- CKA within and across seeds


def analyse_models(records: dict, images: torch.Tensor, args) -> list[dict]:
    """Minibatch CKA, PC1 shares and blocks of every model (stored in its record); across seeds for pairs."""
    from reprlab.analysis.cka_report import CKAConfig, analyse

    config = CKAConfig(output_dir="-", data="-", models=["-"], batch_size=args.cka_batch, threshold=args.threshold,
                       device=args.device)
    by_family: dict[tuple, list[str]] = {}
    for r in records.values():
        by_family.setdefault((r["depth"], r["width"], r["fraction"]), []).append(r["name"])
    seeds = []
    for names in by_family.values():
        names = sorted(names, key=lambda n: records[n]["seed"])
        pair = names[:2]
        t0 = time.time()
        report = analyse(config, [_load(records[n]) for n in pair], inputs=images)
        for name, m in zip(pair, report.models):
            records[name].update(layers=m["layers"], cka=m["cka"], pc1=m["pc1_fraction"], blocks=m["blocks"],
                                 layers_in_blocks=m["layers_in_blocks"], cka_seconds=round(time.time() - t0, 1))
        for name in names[2:]:
            single = analyse(config, [_load(records[name])], inputs=images).models[0]
            records[name].update(layers=single["layers"], cka=single["cka"], pc1=single["pc1_fraction"],
                                 blocks=single["blocks"], layers_in_blocks=single["layers_in_blocks"])
        if report.cross is not None:
            cross = np.array(report.cross)
            block = {i for b in records[pair[0]]["blocks"] for i in range(b["start"], b["end"] + 1)}
            diag = np.diag(cross)
            inside = [diag[i] for i in block]
            outside = [diag[i] for i in range(len(diag)) if i not in block]
            seeds.append({"models": pair, "family": records[pair[0]]["family"], "cross": np.round(cross, 6).tolist(),
                          "diagonal": np.round(diag, 4).tolist(),
                          "inside_block_mean": round(float(np.mean(inside)), 4) if inside else None,
                          "outside_block_mean": round(float(np.mean(outside)), 4) if outside else None})
        print(f"CKA {', '.join(pair)}: {records[pair[0]]['layers_in_blocks']} of {len(records[pair[0]]['layers'])} "
              f"layers in blocks ({time.time() - t0:.1f} s)", flush=True)
    return seeds


# ----------------------------------------------------------------------------- probes and deletion


@torch.no_grad()
def _layer_features(model, layers, images, batch=256) -> list[torch.Tensor]:
    """Each layer's output averaged over its spatial positions: (N, C) per layer."""
    from reprlab.analysis.activations import LayerRecorder

    model.eval()
    device = next(model.parameters()).device
    out = [[] for _ in layers]
    with LayerRecorder(model, layers, pool="mean") as rec:
        for start in range(0, len(images), batch):
            model(images[start:start + batch].to(device))
            for i, a in enumerate(rec.outputs()):
                out[i].append(a.float().cpu())
    return [torch.cat(o) for o in out]


def _softmax_probe(train_f, train_y, test_f, test_y, l2=1e-3, iters=100) -> float:
    """A multinomial logistic regression (L-BFGS, standardised features); test accuracy."""
    mean, std = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    a, b = (train_f - mean) / std, (test_f - mean) / std
    w = torch.zeros(a.shape[1], 10, requires_grad=True)
    bias = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, train_y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((b @ w + bias).argmax(-1) == test_y).float().mean())


def layer_probes(record, train_x, train_y, test_x, test_y, args) -> list[float]:
    """Linear-probe test accuracy of every layer (spatial-mean features; 5,000 training / 2,000 test images)."""
    n_train, n_test = (512, 256) if args.quick else (5000, 2000)
    model = _load(record, args.device)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train_x), generator=g)[:n_train]
    tr = _layer_features(model.module, model.layers, train_x[idx])
    te = _layer_features(model.module, model.layers, test_x[:n_test])
    accs = [round(_softmax_probe(a, train_y[idx], b, test_y[:n_test]), 4) for a, b in zip(tr, te)]
    print(f"probes {record['name']}: {accs}", flush=True)
    return accs


@torch.no_grad()
def block_deletion(record, test_x, test_y, args) -> list[dict]:
    """Test accuracy (2,000 images) with each identity-shortcut residual block removed, no retraining."""
    from reprlab.analysis.image_classifier import predict

    n = 256 if args.quick else 2000
    model = _load(record, args.device).module
    base = predict(model, test_x[:n], test_y[:n])[0]
    layer_index = {name: i for i, name in enumerate(record["layers"])}
    in_block = {i for b in record.get("blocks", []) for i in range(b["start"], b["end"] + 1)}
    rows = []
    for k, block in enumerate(model.blocks):
        if not isinstance(block.shortcut, torch.nn.Identity):
            continue
        pruned = copy.deepcopy(model)
        pruned.blocks[k] = torch.nn.Identity()
        acc = predict(pruned, test_x[:n], test_y[:n])[0]
        out = layer_index[f"blocks.{k}"]
        rows.append({"block": k, "layer": out, "in_block_structure": out in in_block,
                     "accuracy": round(acc, 4), "drop": round(base - acc, 4)})
    print(f"deletion {record['name']}: base {base:.4f}, drops {[r['drop'] for r in rows]}", flush=True)
    return [{"base_accuracy": round(base, 4)}] + rows


# ----------------------------------------------------------------------------- text


def text_label(path: str) -> str:
    """A text model's short name: the run folder for ``<run>/model``."""
    p = Path(path)
    return p.parent.name if p.name == "model" else p.name


def _trained_info(path: str) -> dict:
    info = Path(path).parent / "trained.json"  # written beside a fine-tune trained by this script
    return json.loads(info.read_text()) if info.is_file() else {}


def _finetune(args, name: str, epochs: float, run) -> tuple[str, dict]:
    """Train ``WORK_DIR/text/<name>`` with ``run(out, loop)`` unless its model and trained.json exist."""
    from reprlab.io import atomic_write_json
    from reprlab.train import TrainConfig

    out = args.work_dir / "text" / name
    info_path = out / "trained.json"
    if not (out / "model").is_dir() or not info_path.is_file():
        # lr 5e-5 as in bench/train_retrieval.py; quick: 2 steps at a high rate, a change the test can see
        steps = dict(max_steps=2, batch_size=4, lr=1e-3) if args.quick else dict(lr=5e-5)
        loop = TrainConfig(output_dir=str(out), epochs=epochs, warmup_ratio=0.1, seed=0, device=args.device,
                           log_every=1, checkpoint_every=10, resume=True, **steps)
        t0 = time.time()
        result = run(out, loop)
        losses = [m["loss"] for m in result.metrics if "loss" in m]
        atomic_write_json(info_path, {
            "recipe": f"train {name.split('-e')[0]}", "epochs": epochs, "steps": result.steps,
            "examples": getattr(result, "examples", None),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "train_seconds": round(time.time() - t0, 1)})
    info = json.loads(info_path.read_text())
    print(f"text fine-tune {out / 'model'}: {info}", flush=True)
    return str(out / "model"), info


def text_finetunes(args) -> list[tuple[str, dict]]:
    """The fine-tuned encoders compared with MiniLM: (model folder, training info) for each of ``--text-models``,
    then, when their epochs are > 0, fine-tunes of MiniLM on SciFact's train queries trained here (reused when
    WORK_DIR/text/<name>/model exists), passages cut to the text CKA's length, lr 5e-5, batch 32:
    ``train dpr`` (BM25 hard negatives) for ``--text-dpr-epochs`` and ``train ance`` (negatives from the
    model's own index of the corpus, refreshed every 20 steps, in sync mode) for ``--text-ance-epochs``."""
    from reprlab.retrieval.ance.recipe import AnceConfig, run_ance
    from reprlab.retrieval.dpr import DprConfig, run_dpr

    models = [(path, _trained_info(path)) for path in args.text_models]
    data = common.data_path("scifact", "beir")
    if args.quick:  # 60 training queries over 300 documents: an index the quick ANCE run can rebuild in seconds
        data = common.write_subsample(data, args.work_dir / "scifact-quick", {"train": 60}, 300)
    data, length = str(data), 64 if args.quick else 128
    if args.text_dpr_epochs > 0:
        models.append(_finetune(args, f"dpr-e{args.text_dpr_epochs:g}", args.text_dpr_epochs, lambda out, loop: run_dpr(
            DprConfig(output_dir=str(out), data=data, split="train", model="minilm", passage_max_length=length,
                      train=loop))))
    if args.text_ance_epochs > 0:
        models.append(_finetune(args, f"ance-e{args.text_ance_epochs:g}", args.text_ance_epochs, lambda out, loop: run_ance(
            AnceConfig(output_dir=str(out), data=data, split="train", model="minilm", passage_max_length=length,
                       refresh_every=2 if args.quick else 20, refresh_mode="sync",
                       refresher_threads=torch.get_num_threads(), train=loop))))
    return models


def text_part(args) -> list[dict]:
    """MiniLM (and each fine-tuned encoder of :func:`text_finetunes`, compared with it) on SciFact abstracts."""
    from reprlab.analysis.cka_report import CKAConfig, analyse, load_model

    corpus = common.data_path("scifact", "beir", "corpus.jsonl")
    max_length = 64 if args.quick else 128
    config = CKAConfig(output_dir="-", data=str(corpus), models=["minilm"], batch_size=min(128, args.text_examples),
                       max_examples=args.text_examples, max_length=max_length, threshold=args.threshold,
                       device=args.device)
    rows = []
    t0 = time.time()
    base = analyse(config).models[0]
    rows.append({"model": "minilm", "layers": base["layers"], "cka": base["cka"], "pc1": base["pc1_fraction"],
                 "blocks": base["blocks"], "seconds": round(time.time() - t0, 1)})
    for path, info in text_finetunes(args):
        t0 = time.time()
        report = analyse(config, [load_model("minilm"), load_model(path)])
        m = report.models[1]
        cross = np.asarray(report.cross)  # (MiniLM layers, this model's layers)
        row = {"model": path, "layers": m["layers"], "cka": m["cka"], "pc1": m["pc1_fraction"],
               "blocks": m["blocks"], "cross_with_minilm": report.cross,
               "seconds": round(time.time() - t0, 1), "training": info}
        if cross.shape[0] == cross.shape[1]:  # a fine-tune: layer i against MiniLM's layer i
            row["diagonal_with_minilm"] = [round(float(cross[i, i]), 4) for i in range(len(cross))]
        else:  # a student of another depth: the MiniLM layer each of its layers is most like
            row["closest_minilm_layer"] = [int(j) for j in cross.argmax(axis=0)]
            row["closest_minilm_cka"] = [round(float(v), 4) for v in cross.max(axis=0)]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the peer


def peer_comparison(record, test_x, args) -> dict:
    """The layer x layer minibatch CKA of one model's block outputs: ours vs ckatorch on the same activations,
    on ``args.device`` (and on the CPU too when that is a GPU). Both sides get the activations already on
    the device; a pass ends when its matrix is on the host."""
    from reprlab.analysis.activations import LayerRecorder
    from reprlab.analysis.cka import cka, gram_linear, minibatch_cka

    ckatorch = __import__("ckatorch")
    loaded = _load(record, args.device)
    model = loaded.module.eval()
    layers = [n for n in loaded.layers if not n.endswith("act1")]
    n = 256 if args.quick else 512
    batch = args.cka_batch
    acts: list[list[torch.Tensor]] = []  # per minibatch: per layer (batch, features) on the host
    with torch.no_grad(), LayerRecorder(model, layers) as rec:
        for start in range(0, n, batch):
            model(test_x[start:start + batch].to(args.device))
            acts.append([a.float().flatten(1).cpu() for a in rec.outputs()])
    grams = [gram_linear(torch.cat([b[i] for b in acts]).to(args.device)) for i in range(len(layers))]  # (n, n) each
    full = np.array([[cka(gx, gy, debiased=True) for gy in grams] for gx in grams])  # the full-data reference
    del grams
    out = {"model": record["name"], "layers": len(layers), "examples": n, "batch": batch, "by_device": {}}
    for device in dict.fromkeys([args.device, "cpu"]):
        on = [[a.to(device) for a in b] for b in acts]
        stacked = [torch.stack([b[i] for b in on]) for i in range(len(layers))]  # (batches, batch, d) per layer

        def ours():
            return minibatch_cka(on, device=device).a

        def peer():
            return np.array([[float(ckatorch.cka_batch(x, y)) for y in stacked] for x in stacked])

        sync = torch.cuda.synchronize if device == "cuda" else None
        timings = common.timed_interleaved({"reprlab": ours, "ckatorch": peer}, repeat=3, warmup=int(device != "cpu"),
                                           sync=sync)
        a, b = timings["reprlab"].result, timings["ckatorch"].result
        out["by_device"][device] = {
            "max_abs_diff": float(np.abs(a - b).max()), "max_abs_diff_full_data": float(np.abs(a - full).max()),
            "reprlab_s": timings["reprlab"].rounded(), "ckatorch_s": timings["ckatorch"].rounded(),
            "speedup": round(timings["ckatorch"]["median"] / timings["reprlab"]["median"], 2)}
        print(f"peer on {device}: {out['by_device'][device]}", flush=True)
        del on, stacked
    out.update(out["by_device"][args.device])  # the headline: the device the bench ran on
    out["device"] = args.device
    return out


# ----------------------------------------------------------------------------- findings, figures, table


def findings(records: dict, seeds: list[dict]) -> dict:
    """The paper's four findings as numbers (see the module docstring of bench/cka.py)."""
    analysed = [r for r in records.values() if "cka" in r]
    share = {r["name"]: r["layers_in_blocks"] / len(r["layers"]) for r in analysed}
    pc_in, pc_out = [], []
    for r in analysed:
        block = {i for b in r["blocks"] for i in range(b["start"], b["end"] + 1)}
        pc_in += [r["pc1"][i] for i in block]
        pc_out += [r["pc1"][i] for i in range(len(r["pc1"])) if i not in block]
    drops_in, drops_out = [], []
    for r in analysed:
        for row in r.get("deletion", [])[1:]:
            (drops_in if row["in_block_structure"] else drops_out).append(row["drop"])
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731
    return {
        "share_of_layers_in_blocks": {k: round(v, 3) for k, v in share.items()},
        "pc1_share_inside_blocks": mean(pc_in), "pc1_share_outside_blocks": mean(pc_out),
        "cross_seed_inside_block": mean([s["inside_block_mean"] for s in seeds if s["inside_block_mean"] is not None]),
        "cross_seed_outside_block": mean([s["outside_block_mean"] for s in seeds
                                          if s["outside_block_mean"] is not None]),
        "deletion_drop_inside_block": mean(drops_in), "deletion_drop_outside_block": mean(drops_out),
    }


def plots(records: dict, seeds: list[dict], text: list[dict], args, settings: dict) -> list[str]:
    from reprlab.errors import require

    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suffix = "-quick" if args.quick else ""
    written = []
    depth0, fraction0 = settings["reference"]  # the width axis' depth and data share
    seed0 = [r for r in records.values() if r["seed"] == 0]
    data_axis = [r for r in seed0 if r["axis"] == "data"]
    dw = (data_axis[0]["depth"], data_axis[0]["width"]) if data_axis else None
    rows = [("width", sorted((r for r in seed0 if r["depth"] == depth0 and r["fraction"] == fraction0
                              and r["axis"] in ("width", "depth")), key=lambda r: r["width"])),
            ("depth", sorted((r for r in seed0 if r["width"] == 1 and r["fraction"] == fraction0), key=lambda r: r["depth"])),
            ("data", sorted((r for r in seed0 if dw and (r["depth"], r["width"]) == dw), key=lambda r: -r["fraction"])),
            ("wide-deep", sorted((r for r in seed0 if r["axis"] == "wide-deep" or (
                r["axis"] == "depth" and any(w["axis"] == "wide-deep" and w["depth"] == r["depth"] for w in seed0))),
                key=lambda r: r["width"]))]
    rows = [(axis, rs) for axis, rs in rows if rs]
    if not rows:
        return written
    cols = max(len(rs) for _, rs in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.0 * cols, 2.9 * len(rows)), squeeze=False)
    for i, (axis, rs) in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(rs):
                ax.axis("off")
                continue
            r = rs[j]
            ax.imshow(np.array(r["cka"]), origin="lower", cmap="magma", vmin=0, vmax=1)
            ax.set_title(f"{r['family']}\nacc {r['test_accuracy']:.3f}, {r['layers_in_blocks']}/{len(r['layers'])} "
                         "in blocks", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(f"{axis} axis")
    fig.suptitle("Layer x layer CKA (Fashion-MNIST test images)", fontsize=10)
    fig.tight_layout()
    written.append(_save(fig, f"cka-heatmaps{suffix}.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, axis in zip(axes, ("width", "depth")):
        for r in dict(rows).get(axis, []):
            depth = np.linspace(0, 1, len(r["pc1"]))
            ax.plot(depth, r["pc1"], label=r["family"].split(",")[0])
        ax.set_xlabel("relative depth")
        ax.set_ylabel("variance share of PC1")
        ax.set_title(f"{axis} axis")
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, f"cka-pc1{suffix}.png"))

    if seeds:
        fig, axes = plt.subplots(1, len(seeds), figsize=(3.2 * len(seeds), 3.0), squeeze=False)
        for ax, s in zip(axes[0], seeds):
            ax.imshow(np.array(s["cross"]), origin="lower", cmap="magma", vmin=0, vmax=1)
            ax.set_title(f"{s['family']}\nseed 0 vs seed 1", fontsize=8)
            ax.set_xlabel("layer (seed 1)")
            ax.set_ylabel("layer (seed 0)")
        fig.tight_layout()
        written.append(_save(fig, f"cka-seeds{suffix}.png"))
    if text:
        fig, axes = plt.subplots(1, len(text), figsize=(3.2 * len(text), 3.0), squeeze=False)
        for ax, t in zip(axes[0], text):
            ax.imshow(np.array(t["cka"]), origin="lower", cmap="magma", vmin=0, vmax=1)
            ax.set_title(text_label(t["model"]), fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, f"cka-text{suffix}.png"))
    return written


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def _save(fig, name: str) -> str:
    import matplotlib.pyplot as plt

    path = RESULTS / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(common.REPO))


def markdown(records, seeds, text, peer, found, settings, args) -> str:
    lines = [f"Grid: {args.grid}; {settings['steps']} steps of {settings['batch_size']}, inputs "
             f"{28 // settings['pool_input']} x {28 // settings['pool_input']}; CKA on {args.cka_examples} test images "
             f"(minibatches of {args.cka_batch}); blocks: >= 3 consecutive layers with pairwise CKA >= {args.threshold}.",
             "", "| model | axis | seed | test acc | layers in blocks | PC1 share (max) | train s |", "|---|---|---|---|---|---|---|"]
    for r in sorted(records.values(), key=lambda r: (r["axis"], r["depth"], r["width"], -r["fraction"], r["seed"])):
        if "cka" not in r:
            continue
        lines.append(f"| {r['family']} | {r['axis']} | {r['seed']} | {r['test_accuracy']:.4f} | "
                     f"{r['layers_in_blocks']} / {len(r['layers'])} | {max(r['pc1']):.3f} | {r.get('train_seconds', '')} |")
    lines += ["", "| cross-seed pair | mean CKA, same layer, inside the block | outside |", "|---|---|---|"]
    for s in seeds:
        lines.append(f"| {s['family']} | {s['inside_block_mean']} | {s['outside_block_mean']} |")
    lines += ["", "| finding | number |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in found.items() if k != "share_of_layers_in_blocks"]
    if peer:
        lines += ["", f"Peer (ckatorch {_version('ckatorch')}): layer x layer minibatch CKA of {peer['model']} "
                  f"({peer['layers']} block outputs, {peer['examples']} test images in minibatches of {peer['batch']}), "
                  "median of 3 passes (min-max):", "",
                  "| device | reprlab s | ckatorch s | speed-up | max abs difference | vs full-data CKA |",
                  "|---|---|---|---|---|---|"]
        for device, p in peer["by_device"].items():
            lines.append(f"| {device} | {p['reprlab_s']['median']:.4f} ({p['reprlab_s']['min']:.4f}-"
                         f"{p['reprlab_s']['max']:.4f}) | {p['ckatorch_s']['median']:.4f} ({p['ckatorch_s']['min']:.4f}-"
                         f"{p['ckatorch_s']['max']:.4f}) | {p['speedup']}x | {p['max_abs_diff']:.2e} | "
                         f"{p['max_abs_diff_full_data']:.3f} |")
        lines.append("")
    for t in text:
        extra = f", CKA with MiniLM layer by layer {t['diagonal_with_minilm']}" if "diagonal_with_minilm" in t else \
            (f", closest MiniLM layer per layer {t['closest_minilm_layer']} (CKA {t['closest_minilm_cka']})"
             if "closest_minilm_layer" in t else "")
        lines.append(f"Text: {text_label(t['model'])}: blocks {[(b['start'], b['end']) for b in t['blocks']]}, "
                     f"PC1 {[round(p, 3) for p in t['pc1']]}{extra}.")
    return "\n".join(lines)
