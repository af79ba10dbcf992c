"""bench/blockskim.py's report: the tables, the speed-vs-F1 plot and the BENCHMARKS.md section of a run.

Also the names both share: the reader variants, the eval sets, and the rule that picks each skim-layer
set's threshold on the dev side (:func:`choose_threshold`), so that no operating point is read off the
questions it is reported on.
"""

from __future__ import annotations

from pathlib import Path

import common

EVAL_SETS = {"xquad": "XQuAD-en eval split (SQuAD v1.1 dev subset)",
             "hotpotqa-all": "HotpotQA eval split, all ~10 paragraphs per question"}

# variant -> (predictor input, reader frozen while the predictors train, run folder)
VARIANTS = {
    "diagonal": ("diagonal", False, "blockskim-diagonal"),
    "diagonal+question": ("diagonal+question", False, "blockskim-question"),
    "frozen-diagonal": ("diagonal", True, "blockskim-diagonal-frozen"),
    "frozen-diagonal+question": ("diagonal+question", True, "blockskim-question-frozen"),
}
F1_SLACK = 1.0  # the goal's "at most 1 F1 below the plain reader"


def variant_label(variant: str) -> str:
    features, frozen, _ = VARIANTS[variant]
    return f"Block Skim ({features}{', reader frozen' if frozen else ''})"


def chosen_key(reader: str, layers) -> str:
    """The key of one (reader label, skim layers) in a run's ``tuning["chosen"]``: "Block Skim (...) @ 1,2"."""
    return f"{reader} @ {','.join(map(str, layers))}"


def choose_threshold(plain_f1: float, rows: list[dict], slack: float = F1_SLACK) -> float:
    """The threshold of ``rows`` (one skim-layer set's dev rows: ``threshold``, ``f1``, ``slots``) that runs the
    fewest slots while its F1 is at most ``slack`` below ``plain_f1``; 0 (skip nothing) when none is."""
    good = [r for r in rows if r["f1"] >= plain_f1 - slack]
    return min(good, key=lambda r: (r["slots"], -r["threshold"]))["threshold"] if good else 0.0


def tuning_table(tuning: dict) -> str:
    """The dev side's rows and each skim-layer set's chosen threshold, as Markdown."""
    lines = [f"Dev side ({tuning['questions']} questions, never trained on): plain reader F1 {tuning['plain_f1']:.2f}; "
             f"each skim-layer set's threshold is the one with the fewest slots whose F1 is >= "
             f"{tuning['plain_f1'] - F1_SLACK:.2f}.", "",
             "| reader | skim layers | threshold | dev EM | dev F1 | dev slots run | chosen |",
             "|---|---|---|---|---|---|---|"]
    for r in tuning["rows"]:
        layers = ",".join(map(str, r["skim_layers"]))
        chosen = "**yes**" if tuning["chosen"].get(chosen_key(r["reader"], r["skim_layers"])) == r["threshold"] else ""
        lines.append(f"| {r['reader']} | {layers} | {r['threshold']:g} | {r['exact_match']:.2f} | {r['f1']:.2f} | "
                     f"{r['slots']:.2f} | {chosen} |")
    return "\n".join(lines)


HEADER = ("| reader | skim layers | threshold | EM | F1 | wall ms / q (median) | min-max "
          "| speedup (wall; per-pass range) | CPU ms / q (median) | speedup (CPU; per-pass range) "
          "| fastest wall ms / q | slots run |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def table(result: dict) -> str:
    lines = [HEADER]
    for r in result["rows"]:
        layers = ",".join(map(str, r["skim_layers"])) if r["skim_layers"] else "-"
        threshold = "-" if r["threshold"] is None else f"{r['threshold']:g}"
        lines.append(f"| {r['reader']} | {layers} | {threshold} | {r['exact_match']:.2f} | {r['f1']:.2f} | "
                     f"{r['ms_per_question']:.1f} | {r['ms_min']:.1f}-{r['ms_max']:.1f} | {r['speedup']:.2f}x "
                     f"({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) | {r['cpu_ms_per_question']:.1f} | "
                     f"{r['cpu_speedup']:.2f}x ({r['cpu_speedup_min']:.2f}-{r['cpu_speedup_max']:.2f}) | "
                     f"{r['fastest_ms_per_question']:.1f} | {r['slots']:.2f} |")
    return "\n".join(lines)


def predictor_table(result: dict) -> str:
    lines = ["| predictor | after layer | AUC (answer blocks vs others) | mean P(keep): answer / other | "
             "answer blocks |", "|---|---|---|---|---|"]
    for r in result.get("predictors", []):
        lines.append(f"| {r['reader']} | {r['layer']} | {r['auc']:.3f} | {r['p_keep_answer']:.3f} / "
                     f"{r['p_keep_other']:.3f} | {r['answer_share']:.0%} of {r['blocks']} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib is not installed: no plot (pip install 'reprlab[plot]')")
        return
    rows = result["rows"]
    plain = rows[0]
    fig, ax = plt.subplots(figsize=(7, 6))
    groups: dict[str, list] = {}
    for r in rows[1:]:
        if r["threshold"] > 0:
            no_skip = [x for x in rows[1:] if x["threshold"] == 0 and x["reader"] == r["reader"]]
            key = f"{r['reader']}, skim after layer {','.join(map(str, r['skim_layers']))}"
            groups.setdefault(key, list(no_skip)).append(r)
    for label, rs in groups.items():
        ax.plot([r["cpu_speedup"] for r in rs], [r["f1"] for r in rs], "o-", label=label)
        for r in rs:
            ax.annotate(f"{r['threshold']:g}", (r["cpu_speedup"], r["f1"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.plot([1.0], [plain["f1"]], "k*", markersize=12, label="plain reader")
    ax.axhline(plain["f1"] - 1.0, color="grey", linestyle=":", label="plain F1 - 1")
    ax.axvline(1.5, color="grey", linestyle="--", label="1.5x")
    ax.set_xlabel("speedup over the plain reader (CPU time per question, 1 thread)")
    ax.set_ylabel(f"F1 ({EVAL_SETS[result.get('eval_set', 'xquad')]})")
    ax.set_title(f"MiniLM-L6 reader, {result['eval_questions']} questions, "
                 f"{sum(result['train_questions'].values())} training questions")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)  # below: the points stay visible
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")


def goal(rows: list[dict], key: str) -> str:
    if not rows:
        return "not met in this run"
    return "met by " + ", ".join(f"{r['reader']} after layer {','.join(map(str, r['skim_layers']))} "
                                 f"t={r['threshold']:g} ({r[key]:.2f}x, F1 {r['f1']:.2f})" for r in rows)


def imported_note(result: dict) -> str:
    """A sentence for readers trained elsewhere (bench/blockskim_transfer.py's imported.json), or ""."""
    carried = {k: r["imported"] for k, r in result.get("readers", {}).items() if "imported" in r}
    if not carried:
        return ""
    record = next(iter(carried.values()))
    first = record["trained_on"]
    note = (f" The readers ({', '.join(carried)}) were trained with the same recipe on device {first['device']} "
            f"({first['gpu'] or first['machine']}) and carried here as a float16 copy cast back to float32: every "
            "reader shares the exact same rounded weights.")
    if not record.get("start_model", {}).get("same", True):
        note += (" They started from that machine's all-MiniLM-L6-v2, whose weights are not byte-identical to the "
                 "shipped package's here (a stand-in; both sha256 in the JSON's readers).")
    return note


def append_section(result: dict, png: Path) -> None:
    s = result["settings"]
    tq = result["train_questions"]
    eval_set = result.get("eval_set", "xquad")
    if eval_set == "xquad":
        held_out = (f"{result['eval_questions']} questions of {result['eval_articles']} held-out articles "
                    "(sha256 article-title rule")
    else:
        held_out = (f"{result['eval_questions']} held-out HotpotQA questions, each over all its paragraphs "
                    f"({result['eval_tokens_per_question']:.0f} context tokens on average; sha256 question-id rule")
    hotpot = ("HotpotQA questions over all their paragraphs" if s.get("hotpotqa_contexts") == "all"
              else "HotpotQA answers in supporting paragraphs")
    lines = [
        "",
        f"## Block Skim: plain MiniLM reader vs Block Skim ({EVAL_SETS[eval_set]})",
        "",
        f"Command: `flock /tmp/reprlab-heavy.lock {result['command']}` (from the repo root). "
        f"Machine: {result['machine']}. Date: {result['date']}. Total {result['total_minutes']:.0f} min "
        "(training wall minutes: " + ", ".join(f"{k} {v}" for k, v in result["train_minutes"].items())
        + ")." + imported_note(result),
        "",
        f"**Little training data**: {tq['squad']} SQuAD questions (train side of the article split) + "
        f"{tq['hotpotqa']} {hotpot}, about 1% of SQuAD's training set, so "
        "the absolute EM/F1 are far below a SQuAD-trained MiniLM's; the comparison is between readers "
        "trained alike from all-MiniLM-L6-v2 "
        f"({s['epochs']:g} epochs, batch {s['batch_size']}, lr {s['lr']:g}). Eval: "
        f"{held_out}, eval fraction {s['eval_fraction']}), one question at a time, max_length "
        f"{s['max_length']}, stride {s['stride']}; wall time = tokenization + model + decoding, median of "
        f"{s['repeats']} interleaved passes (min-max and the per-pass speedup range beside it; every pass in the "
        f"JSON). Block Skim: blocks of {s['block_size']} context tokens, predictors "
        f"trained after layers {s['train_layers']} (keep weight {s['keep_weight']:g}, predictor lr x"
        f"{s['predictor_lr_scale']:g}), skipping after the "
        "layers shown; threshold = skip a block when P(keep) < threshold (0 keeps all). slots run = "
        "token x layer slots computed / those of the full sequence."
        + (f" \"Reader frozen\": the predictors alone trained for {s['frozen_epochs']:g} epochs on the plain reader "
           "(same data, batch and lr x scale; the reader's weights unchanged)."
           if any(VARIANTS[v][1] for v in s["variants"]) else ""),
        "",
        table(result),
        "",
    ]
    if result.get("tuning"):
        lines += [tuning_table(result["tuning"]), "",
                  "Goal (>= 1.5x at <= 1 F1 below the plain reader) at the thresholds chosen on dev, by wall time: "
                  + goal(result["goal_met_at_chosen"], "speedup") + ". Read off every eval row instead (not a "
                  "result: the operating point would be chosen on the reported questions): "
                  + goal(result["goal_met_by"], "speedup") + "."]
    else:
        lines += ["Goal (>= 1.5x at <= 1 F1 below the plain reader), read off the eval rows (no dev side), by wall "
                  "time: " + goal(result["goal_met_by"], "speedup")
                  + "; by CPU time: " + goal(result["goal_met_by_cpu_time"], "cpu_speedup") + "."]
    lines += [
        "",
        f"![speed vs F1]({common.repo_relative(png)})",
        "",
    ]
    if result.get("predictors"):
        lines += ["How well the trained predictors separate the blocks that hold the answer from the others, "
                  "on the same eval questions (every block seen, threshold 0):", "", predictor_table(result), ""]
    common.append_benchmarks("\n".join(lines))
