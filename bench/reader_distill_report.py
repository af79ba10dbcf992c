"""The report of ``bench/reader_distill.py``: the headline rows, the BENCHMARKS tables in markdown and the recall plot
(split from the script to keep each file readable; imported by it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

KS = (2, 5, 10)  # recall cut-offs of the tables and the plot

def headline(result: dict) -> dict:
    """Per dataset (``<name>``: the FiD teacher; ``<name>-extractive``: the extractive one): recall@5 of the distilled
    retriever of the iteration chosen on dev (:func:`dev_choice`), the best baseline, DPR, the gap closed."""
    out = {}
    for name, d in result["datasets"].items():
        for teacher, key in (("fid", name), ("extractive", f"{name}-extractive")):
            info = result.get("distillation", {}).get(f"{name}-{teacher}", {})
            row = _headline_row(d["recall"], f"distill-{teacher}", dev_choice(info.get("recall", {})))
            if row:
                out[key] = row
    return out


def dev_choice(recall: dict) -> str | None:
    """The distillation iteration (``iter-k``, k >= 1) with the highest dev recall@5, the earlier one on a tie;
    None when the run recorded no dev recall (then the headline takes the last iteration)."""
    its = sorted((k for k in recall if k != "iter-0" and recall[k].get("dev")), key=lambda k: int(k.split("-")[1]))
    if not its:
        return None
    return max(its, key=lambda k: (recall[k]["dev"]["recall@5"], -int(k.split("-")[1])))


def _headline_row(r: dict, prefix: str, chosen: str | None = None) -> dict:
    """The row of the retriever ``prefix-chosen`` (the last one named ``prefix...`` when ``chosen`` is None or was
    not evaluated; {} when there is none)."""
    distilled = [k for k in r if k.startswith(prefix)]
    if not distilled:
        return {}
    best = max(("bm25", "minilm"), key=lambda k: r[k]["recall@5"])
    on_dev = bool(chosen) and f"{prefix}-{chosen}" in r
    final = f"{prefix}-{chosen}" if on_dev else sorted(distilled, key=lambda k: int(k.rsplit("-", 1)[1]))[-1]
    out = {"distilled": final, "chosen_on": "dev recall@5" if on_dev else "last iteration",
           "recall@5": r[final]["recall@5"], "best_baseline": best,
           "baseline_recall@5": r[best]["recall@5"], "minilm_recall@5": r["minilm"]["recall@5"],
           "ratio_to_minilm": r[final]["recall@5"] / r["minilm"]["recall@5"] if r["minilm"]["recall@5"] else None}
    if "dpr" in r:
        gap = r["dpr"]["recall@5"] - r[best]["recall@5"]
        out.update({"dpr_recall@5": r["dpr"]["recall@5"],
                    "gap_closed": (r[final]["recall@5"] - r[best]["recall@5"]) / gap if gap > 0 else None})
    return out


def markdown(record: dict) -> str:
    lines = []
    for run, info in record.get("distillation", {}).items():
        lines += [f"### {run}: the teacher's gold recall among each iteration's candidates (training questions with "
                  "gold passages) vs the order of the retriever that found them", "",
                  "| iteration | questions | teacher R@2 | retriever R@2 | teacher R@5 | retriever R@5 |",
                  "|---|---|---|---|---|---|"]
        for it, t in info.get("teacher_candidate_recall", {}).items():
            if t:
                lines.append(f"| {it} | {t['questions']} | {t['teacher']['recall@2']:.3f} | "
                             f"{t['retriever']['recall@2']:.3f} | {t['teacher']['recall@5']:.3f} | "
                             f"{t['retriever']['recall@5']:.3f} |")
        lines.append("")
    for name, t in record.get("teachers_on_dev", {}).items():
        lines += [f"### {name}: teachers on the dev slice ({t['questions']} questions, gold recall among "
                  f"{t['candidates']} candidates; the student's score std {t['student_score_std']:.2f})", "",
                  "| ranking | R@2 | R@5 | R@10 | score std | matching T |", "|---|---|---|---|---|---|"]
        for r, m in t["rows"].items():
            std, temp = t["score_std"].get(r), t["matching_temperature"].get(r)
            lines.append(f"| {r} | {m['recall@2']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | "
                         f"{'' if std is None else f'{std:.3g}'} | {'' if temp is None else f'{temp:.3g}'} |")
        lines.append("")
    for name, d in record["datasets"].items():
        read = (f"; the {d.get('read_with', 'fid')} reader answers the first {d['read_questions']}"
                if d.get("read_questions") else "")
        lines += [f"### {name} ({record['side']} side: {d['questions']} questions, pool {d['pool']} passages{read})",
                  "", "| retriever | R@2 | R@5 | R@10 | reader EM | reader F1 |", "|---|---|---|---|---|---|"]
        for r, m in d["recall"].items():
            em = d.get("reader", {}).get(r)
            read = f"{em['exact_match']:.1f} | {em['f1']:.1f}" if em else "– | –"
            lines.append(f"| {r} | {m['recall@2']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | {read} |")
        for key, base in (("against_minilm", "MiniLM"), ("extractive_against_fid", "the FiD-distilled retriever")):
            if not d.get(key):
                continue
            lines += ["", f"| retriever minus {base} (same questions) | k | mean difference | 95% paired bootstrap | "
                      "won / lost |", "|---|---|---|---|---|"]
            for r, by_k in d[key].items():
                for k, m in by_k.items():
                    lines.append(f"| {r} | {k.split('@')[1]} | {m['difference']:+.3f} | [{m['ci95'][0]:+.3f}, "
                                 f"{m['ci95'][1]:+.3f}] | {m['won']} / {m['lost']} |")
        if "probe" in d:
            lines += ["", "| top-k by | k | EM | F1 | gold recall@k |", "|---|---|---|---|---|"]
            for key, m in d["probe"].items():
                how, k = key.split("@")
                lines.append(f"| {how} | {k} | {m['exact_match']:.1f} | {m['f1']:.1f} | {m[f'recall@{k}']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(record["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        d = record["datasets"][name]
        rows = d["recall"]
        labels = list(rows)
        y = np.arange(len(labels))
        for i, k in enumerate(KS):
            bars = ax.barh(y + (i - 1) * 0.27, [rows[r][f"recall@{k}"] for r in labels], height=0.27,
                           label=f"recall@{k}")
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
        ax.set_yticks(y, labels)
        ax.set_xlim(0, 1.1)
        ax.set_title(f"{name}: gold recall, {record['side']} side ({d['questions']} questions, pool {d['pool']})")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=len(KS), fontsize=8)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
