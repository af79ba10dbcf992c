"""The report of ``bench/natural_tasks.py``: the plots (synthetic world, probes), the tables and the claims with their
seed noise (split from the script to keep each file readable; imported by it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LMS = ("minilm-head", "minilm-mlm", "scratch-ce", "scratch-quad")
FEATURE_NAMES = {"h": "h(s) (encoder)", "f": "f(s)", "p_subset": "p_f(s) on words", "phi_p": "Phi p_f(s)",
                 "phi_p_subset": "Phi p_f(s) on words"}


def summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "seeds": [round(v, 4) for v in values]}


def plot_synthetic(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = record["records"]
    oracle = [r["errors"]["p_star"] for r in recs if r["loss"] == "oracle"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, loss, xlabel in ((axes[0], "ce", "epsilon = E KL(p* || p_f)  (cross-entropy LM)"),
                             (axes[1], "quad", "epsilon = E 1/2 ||Phi^T f - p*||^2  (Quad LM)")):
        rs = [r for r in recs if r["loss"] == loss]
        eps = np.array([r["epsilon"] for r in rs])
        grid = np.linspace(0, eps.max(), 100)
        for f, marker in (("f", "o"), ("phi_p", "s"), ("p_subset", "^")):
            err = np.array([r["errors"][f] for r in rs])
            line = ax.scatter(eps, err, marker=marker, label=FEATURE_NAMES[f], alpha=0.7)
            fit = record["fits"][f"{loss}/{f}"]
            ax.plot(grid, fit["a"] + fit["b"] * np.sqrt(grid), color=line.get_facecolor()[0], lw=1,
                    label=f"  a + b sqrt(eps), R2 {fit['r2_sqrt']:.2f} (best c {fit['best_exponent']:.2f})")
        ax.axhline(np.mean(oracle), color="k", ls=":", label="probe on p* (the true LM)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("probe test error on the natural task")
        ax.legend(fontsize=7)
    fig.suptitle(f"Synthetic HMM world: probe error vs exact epsilon ({len(set(r['seed'] for r in recs))} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


def plot_probes(probes: dict, path: Path) -> None:
    """Per task: probe accuracy (mean, seed std as error bars) of each feature for each LM x prompt, with the
    bag-of-words and MiniLM sentence-embedding baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feats = ("f", "phi_p", "p_subset", "h")
    fig, axes = plt.subplots(1, len(probes), figsize=(7 * len(probes), 4.6), squeeze=False)
    for ax, (task, rec) in zip(axes[0], probes.items()):
        keys = list(rec["rows"])
        x = np.arange(len(keys))
        width = 0.8 / (len(feats) + 1)
        for i, f in enumerate(feats):
            ax.bar(x + i * width, [100 * rec["rows"][k][f]["mean"] for k in keys], width,
                   yerr=[100 * rec["rows"][k][f]["std"] for k in keys], label=FEATURE_NAMES[f], capsize=2)
        ax.bar(x + len(feats) * width, [100 * rec["rows"][k]["zero_shot"] for k in keys], width, label="zero-shot",
               color="0.6")
        for name, value, style in (("bag-of-words", rec["bow"], "--"),
                                   ("MiniLM sentence embedding", rec.get("minilm_sentence"), ":")):
            if value:
                ax.axhline(100 * value["mean"], color="k", ls=style, lw=1, label=name)
        ax.axhline(100 * rec["majority"], color="r", ls="-", lw=0.8, label="majority class")
        ax.set_xticks(x + 0.4 - width / 2, [k.replace("/", "\n") for k in keys], fontsize=7)
        ax.set_ylabel(f"{task} test accuracy % ({rec['n_train']} training examples, {len(rec['bow']['seeds'])} seeds)")
        ax.set_ylim(0, 100)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=8, fontsize=8)
    fig.suptitle("Linear probes on LM features at the [MASK] (prompt: 's . it was [MASK] .' / "
                 "'s . this article is about [MASK] .')")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


def plot_all(saved: dict, out: Path) -> None:
    if "synthetic" in saved:
        plot_synthetic(saved["synthetic"], out.with_suffix(".png"))
    if saved.get("probes"):
        plot_probes(saved["probes"], out.with_name(out.stem + "-probes.png"))


# ----------------------------------------------------------------------------- table


def pct(s: dict | None) -> str:
    return "-" if s is None else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def table(saved: dict) -> str:
    """The markdown tables of whatever parts are in ``saved``."""
    lines = []
    lms = saved.get("lms", {})
    if lms:
        lines += ["### Language models (held-out masked-LM cross-entropy, nats per masked piece)", "",
                  "| LM | loss | steps | train s | held-out CE | perplexity | accuracy |", "|---|---|---|---|---|---|---|"]
        if "minilm-fresh-head" in saved:
            h = saved["minilm-fresh-head"]
            lines.append(f"| MiniLM, fresh head (start) | - | 0 | 0 | {h['cross_entropy']:.2f} | {h['perplexity']:.0f} | "
                         f"{h['accuracy']:.3f} |")
        for name, r in lms.items():
            h = r["held_out"]
            lines.append(f"| {name} | {r['loss']} | {r['steps']} | {r['train_seconds']} | {h['cross_entropy']:.2f} | "
                         f"{h['perplexity']:.0f} | {h['accuracy']:.3f} |")
        lines.append("")
    for task, rec in saved.get("probes", {}).items():
        lines += [f"### {task}: test accuracy % (mean ± std over {len(rec['bow']['seeds'])} seeds, "
                  f"{rec['n_train']} training examples each; test n = {rec['sizes']['test']})", "",
                  "| LM | prompt | " + " | ".join(FEATURE_NAMES.values()) + " | zero-shot |",
                  "|---|---|" + "---|" * (len(FEATURE_NAMES) + 1)]
        for key, row in rec["rows"].items():
            lm, prompt = key.split("/")
            lines.append(f"| {lm} | {prompt} | " + " | ".join(pct(row[f]) for f in FEATURE_NAMES)
                         + f" | {100 * row['zero_shot']:.1f} |")
        lines += ["", f"Baselines: bag-of-words {pct(rec['bow'])}; MiniLM sentence embedding "
                  f"{pct(rec.get('minilm_sentence'))}; majority class {100 * rec['majority']:.1f}.", ""]
    syn = saved.get("synthetic")
    if syn:
        lines += ["### Synthetic world: probe error vs epsilon, fits error = a + b eps^c", "",
                  "| LM loss | feature | a | b (c = 1/2) | R2 (c = 1/2) | R2 (c = 1) | best c | R2 (best c) |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, fit in syn["fits"].items():
            loss, f = key.split("/")
            lines.append(f"| {loss} | {FEATURE_NAMES[f]} | {fit['a']:.3f} | {fit['b']:.3f} | {fit['r2_sqrt']:.3f} | "
                         f"{fit['r2_linear']:.3f} | {fit['best_exponent']:.2f} | {fit['r2_best']:.3f} |")
        oracle = [r["errors"]["p_star"] for r in syn["records"] if r["loss"] == "oracle"]
        lines += ["", f"Probe on the true p*: test error {np.mean(oracle):.3f} (every seed: {oracle}).", ""]
        lines += ["| seed | loss | step | epsilon | KL | " + " | ".join(FEATURE_NAMES[f] for f in ("f", "p_subset", "phi_p"))
                  + " |", "|---|---|---|---|---|---|---|---|"]
        for r in syn["records"]:
            if r["loss"] != "oracle":
                lines.append(f"| {r['seed']} | {r['loss']} | {r['step']} | {r['epsilon']:.4f} | {r['kl']:.4f} | "
                             + " | ".join(f"{r['errors'][f]:.3f}" for f in ("f", "p_subset", "phi_p")) + " |")
        lines.append("")
    return "\n".join(lines)


def compare(a: dict, b: dict) -> str:
    """``a`` minus ``b`` in accuracy points, called a tie when inside twice the seed spread."""
    diff = 100 * (a["mean"] - b["mean"])
    noise = 200 * max(a["std"], b["std"])
    return f"{diff:+.1f} ({'tie' if abs(diff) <= noise else 'gap'}, noise {noise:.1f})"


def claims(saved: dict) -> str:
    """The paper's comparisons, read off the results: differences in points with their seed noise."""
    lines = []
    for task, rec in saved.get("probes", {}).items():
        for key, row in rec["rows"].items():
            lm, prompt = key.split("/")
            lines.append(f"- {task} {lm} ({prompt}): Phi p_f - f = {compare(row['phi_p'], row['f'])}; "
                         f"Phi p_f - BoW = {compare(row['phi_p'], rec['bow'])}; "
                         f"f - BoW = {compare(row['f'], rec['bow'])}")
        for lm in LMS:
            if f"{lm}/prompt" in rec["rows"] and f"{lm}/none" in rec["rows"]:
                p, n = rec["rows"][f"{lm}/prompt"], rec["rows"][f"{lm}/none"]
                lines.append(f"- {task} {lm}: prompt - none: f {compare(p['f'], n['f'])}; "
                             f"Phi p_f {compare(p['phi_p'], n['phi_p'])}; p_f on words "
                             f"{compare(p['p_subset'], n['p_subset'])}; zero-shot "
                             f"{100 * (p['zero_shot'] - n['zero_shot']):+.1f}")
        rows = rec["rows"]
        for prompt in ("none", "prompt"):
            q, c = rows.get(f"scratch-quad/{prompt}"), rows.get(f"scratch-ce/{prompt}")
            if q and c:
                lines.append(f"- {task} ({prompt}): Quad f - CE f = {compare(q['f'], c['f'])}; "
                             f"Quad f - CE Phi p_f = {compare(q['f'], c['phi_p'])}")
    syn = saved.get("synthetic")
    if syn:
        last = max(r["step"] for r in syn["records"] if r["step"] is not None)
        for loss in ("ce", "quad"):
            end = [r for r in syn["records"] if r["loss"] == loss and r["step"] == last]
            errs = {f: summary([r["errors"][f] for r in end]) for f in ("f", "p_subset", "phi_p")}
            lines.append(f"- synthetic, {loss} LM after {last} steps: test error f {errs['f']['mean']:.3f} ± "
                         f"{errs['f']['std']:.3f}, Phi p_f {errs['phi_p']['mean']:.3f} ± {errs['phi_p']['std']:.3f}, "
                         f"p_f on words {errs['p_subset']['mean']:.3f} ± {errs['p_subset']['std']:.3f}")
    return "\n".join(lines)
