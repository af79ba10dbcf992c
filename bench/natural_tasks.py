"""Why language models help (Saunshi, Malladi, Arora, ICLR 2021): natural tasks, conditional-mean features, Quad.

The paper's three claims, each measured here:

1. an LM epsilon-optimal in cross-entropy solves a *natural* task linearly with error O(sqrt(epsilon));
2. the features to use are the conditional mean Phi p_f(s) (competitive with f(s), above bag-of-words,
   and helped by a prompt);
3. the Quad objective gives the guarantee on f(s) itself.

Parts (each merges its record into the result JSON, so they can run one at a time under the lock)::

    python bench/natural_tasks.py --parts synthetic                 # the HMM world: error vs exact epsilon
    python bench/natural_tasks.py --parts minilm-head               # MiniLM + MLM head (head alone)
    python bench/natural_tasks.py --parts minilm-mlm                # then the whole MiniLM as a masked LM
    python bench/natural_tasks.py --parts scratch-ce,scratch-quad   # small masked LMs from scratch
    python bench/natural_tasks.py --parts features,probes           # SST-2 / AG News features, probes, table
    python bench/natural_tasks.py --quick                           # smoke run of every part

Real data: SST-2 (train phrases -> probe training sets, dev phrases -> the L2 choice, ``test.tsv`` =
GLUE's labelled dev set of 872 sentences, reported) and AG News (``dev.tsv`` split by
``reprlab.text.splits`` into probe training and dev sides, the official ``test.tsv`` reported). The
LMs never see a label; their unlabelled corpus is Gutenberg + WikiText-2 + the SST-2 train phrases +
the AG News dev.tsv texts (no test text), with 2% of it held out (hash split) for cross-entropy.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

import common
from natural_tasks_report import FEATURE_NAMES, LMS, claims, plot_all, summary, table

NAME = "natural_tasks"
PARTS = ("synthetic", "minilm-head", "minilm-mlm", "scratch-ce", "scratch-quad", "features", "probes")
PROMPTS = {"sst2": "{sentence} . it was {mask} .", "agnews": "{sentence} . this article is about {mask} ."}
NO_PROMPT = "{sentence} {mask}"
# the word subsets of p_f(s) (single word pieces of MiniLM's vocabulary) and the zero-shot class words
SUBSETS = {
    "sst2": ["great", "good", "wonderful", "excellent", "amazing", "fantastic", "brilliant", "beautiful", "perfect",
             "fun", "best", "nice", "funny", "terrible", "bad", "awful", "boring", "horrible", "worst", "poor", "dull",
             "stupid", "weak", "ugly", "pointless", "annoying", "lame", "disappointing"],
    "agnews": ["world", "politics", "war", "government", "iraq", "president", "election", "sports", "football",
               "baseball", "basketball", "soccer", "game", "team", "business", "economy", "market", "stocks",
               "company", "oil", "trade", "technology", "science", "internet", "software", "computer", "space",
               "research"],
}
ZERO_SHOT = {"sst2": {"0": ["terrible"], "1": ["great"]},
             "agnews": {"Business": ["business"], "Sci/Tech": ["technology"], "Sports": ["sports"],
                        "World": ["world"]}}


# ----------------------------------------------------------------------------- data


def corpus(args) -> tuple[Path, list[str]]:
    """The LMs' unlabelled corpus as a JSONL file (train side) and the held-out texts (2%, hash split)."""
    from reprlab.text.classification import read_classification_tsv
    from reprlab.text.corpus import read_texts
    from reprlab.text.splits import split

    path = args.work_dir / "corpus" / "train.jsonl"
    held = args.work_dir / "corpus" / "held_out.jsonl"
    if path.is_file() and held.is_file():
        return path, [json.loads(line)["text"] for line in held.open()]
    root = common.data_root()
    texts = read_texts([common.data_path("gutenberg_books10", "paragraphs.jsonl"),
                        common.data_path("wikitext2_raw_valid_test", "wiki.valid.raw"),
                        common.data_path("wikitext2_raw_valid_test", "wiki.test.raw")])
    texts = [t for t in texts if len(t.split()) >= 4]  # drops the "= Title =" heading lines
    texts += read_classification_tsv(root / "sst2" / "train.tsv").texts
    texts += read_classification_tsv(root / "agnews" / "dev.tsv").texts
    if args.quick:
        texts = texts[::200]
    parts = split(texts, eval_fraction=0.02)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in parts.train)
    held_out = parts.eval[: args.held_out]
    with open(held, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in held_out)
    print(f"corpus: {len(parts.train)} training texts ({sum(len(t.split()) for t in parts.train)} words), "
          f"{len(held_out)} held out", flush=True)
    return path, held_out


def task_data(task: str, args) -> dict:
    """``{"train": pool, "dev", "test"}`` LabelledTexts and the label names of one task."""
    from reprlab.text.classification import read_classification_tsv
    from reprlab.text.splits import split

    root = common.data_root()
    rng = np.random.default_rng(0)
    n_pool = args.n_train * len(args.seeds)

    def sample(data, n):
        return data.subset(sorted(rng.choice(len(data), size=min(n, len(data)), replace=False)))

    if task == "sst2":
        train = read_classification_tsv(common.data_path("sst2", "train.tsv"))
        dev = read_classification_tsv(common.data_path("sst2", "dev.tsv"))
        test = read_classification_tsv(common.data_path("sst2", "test.tsv"))
        names = ["0", "1"]
    else:
        full = read_classification_tsv(common.data_path("agnews", "dev.tsv"))
        sides = split(range(len(full)), key=lambda i: full.texts[i], dev_fraction=0.25)
        train, dev = full.subset(sides.train), full.subset(sides.dev)
        test = read_classification_tsv(common.data_path("agnews", "test.tsv"))
        names = ["Business", "Sci/Tech", "Sports", "World"]
    pool = sample(train, n_pool)
    rng.shuffle(order := np.arange(len(pool)))
    pool = pool.subset(order)  # seed k trains on rows [k * n_train, (k + 1) * n_train): disjoint sets
    out = {"train": pool, "dev": sample(dev, args.n_dev), "test": sample(test, args.n_test) if args.n_test else test}
    return {**out, "names": names}


# ----------------------------------------------------------------------------- the LMs


def scratch_init(args) -> Path:
    """A random-init small encoder with MiniLM's tokenizer (the from-scratch LMs start here)."""
    import torch

    from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
    from reprlab.text.tokenizer import Tokenizer

    folder = args.work_dir / "lms" / "scratch-init"
    if not (folder / "config.json").is_file():
        tok = Tokenizer.from_pretrained("minilm")
        torch.manual_seed(0)
        cfg = EncoderConfig(vocab_size=tok.vocab_size, hidden_size=args.scratch_hidden, num_layers=args.scratch_layers,
                            num_heads=4, intermediate_size=4 * args.scratch_hidden, max_position_embeddings=128)
        SentenceEncoder(Encoder(cfg), tok, "mean", True, 128).save_pretrained(folder)
    return folder


def train_lm(name: str, args) -> dict:
    """Train one LM with ``reprlab pretrain mlm`` (resumable); its held-out cross-entropy."""
    from reprlab.pretrain.mlm import MLMConfig, load_mlm_model, run_mlm
    from reprlab.text.tokenizer import Tokenizer

    corpus_file, held_out = corpus(args)
    out = args.work_dir / "lms" / name
    if name == "minilm-head":
        cfg = dict(model="minilm", loss="ce", max_steps=args.head_steps, head_warmup_steps=args.head_steps,
                   lr=args.head_lr)
    elif name == "minilm-mlm":  # continues minilm-head: encoder and head together, at a fine-tuning rate
        start_from = lm_dir("minilm-head", args)
        if not start_from.is_dir():
            raise SystemExit("minilm-mlm continues minilm-head: run --parts minilm-head first")
        cfg = dict(model=str(start_from), loss="ce", max_steps=args.mlm_steps, lr=args.mlm_lr)
    else:
        cfg = dict(model=str(scratch_init(args)), loss=name.split("-")[1], max_steps=args.scratch_steps,
                   lr=args.scratch_lr)
    config = MLMConfig(corpus=[str(corpus_file)], output_dir=str(out), masking="random", max_length=args.max_length,
                       batch_size=args.batch_size, warmup_ratio=0.06, log_every=25, checkpoint_minutes=10.0,
                       seed=0, device=args.device, resume=True, max_texts=args.max_texts, **cfg)
    start = time.time()
    result = run_mlm(config)
    seconds = time.time() - start
    tok = Tokenizer.from_pretrained(result.model_dir)
    model = load_mlm_model(result.model_dir).to(args.device)
    dist = "quad" if config.loss == "quad" else "softmax"
    held = masked_lm_ce(model, tok, held_out, dist)
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    return {"lm": name, "loss": config.loss, "steps": result.steps, "train_seconds": round(seconds),
            "first_losses": losses[:3], "last_losses": losses[-3:], "held_out": held,
            "config": {k: v for k, v in config.to_dict().items() if k not in ("corpus", "output_dir")}}


def masked_lm_ce(model, tok, texts, distribution: str) -> dict:
    from reprlab.analysis.natural_tasks import masked_lm_cross_entropy

    r = masked_lm_cross_entropy(model, tok, texts, max_length=128, distribution=distribution, show_progress=False)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}


def fresh_head_reference(args) -> dict:
    """MiniLM with a fresh (untrained) head: the held-out cross-entropy the head training starts from."""
    import torch

    from reprlab.pretrain.mlm import load_mlm_model
    from reprlab.text.tokenizer import Tokenizer

    torch.manual_seed(0)
    _, held_out = corpus(args)
    return masked_lm_ce(load_mlm_model("minilm").to(args.device), Tokenizer.from_pretrained("minilm"), held_out,
                        "softmax")


# ----------------------------------------------------------------------------- features


def lm_dir(name: str, args) -> Path:
    return args.work_dir / "lms" / name / "model"


def extract_all(args) -> dict:
    """Features of every LM x task x prompt (and MiniLM sentence embeddings), cached as .npz files."""
    import torch

    from reprlab.analysis.natural_tasks import PromptTemplate, extract_features, word_ids
    from reprlab.encoder import SentenceEncoder
    from reprlab.pretrain.mlm import load_mlm_model
    from reprlab.text.tokenizer import Tokenizer

    seconds = {}
    for task in ("sst2", "agnews"):
        data = task_data(task, args)
        path = args.work_dir / "features" / "minilm-sentence" / f"{task}.npz"
        if not path.is_file():
            start = time.time()
            enc = SentenceEncoder.from_pretrained("minilm").to(args.device)
            arrays = {f"{split}/emb": enc.encode(data[split].texts, batch_size=64, show_progress=False)
                      for split in ("train", "dev", "test")}
            save_npz(path, arrays)
            seconds[f"minilm-sentence/{task}"] = round(time.time() - start)
        for lm in LMS:
            folder = lm_dir(lm, args)
            if not folder.is_dir():
                print(f"features: {lm} is not trained yet (run --parts {lm}); skipped", flush=True)
                continue
            model, tok = None, Tokenizer.from_pretrained(folder)
            subset = word_ids(tok, SUBSETS[task])
            for prompt in ("none", "prompt"):
                path = args.work_dir / "features" / lm / f"{task}-{prompt}.npz"
                if path.is_file():
                    continue
                torch.manual_seed(0)
                model = model or load_mlm_model(folder).to(args.device)
                template = PromptTemplate(PROMPTS[task] if prompt == "prompt" else NO_PROMPT)
                dist = "quad" if lm.endswith("quad") else "softmax"
                start = time.time()
                arrays = {}
                for split in ("train", "dev", "test"):
                    feats = extract_features(model, tok, data[split].texts, template, subset, dist, batch_size=64,
                                             max_length=args.feature_max_length, show_progress=False)
                    arrays.update({f"{split}/{k}": v for k, v in feats.items()})
                save_npz(path, arrays)
                seconds[f"{lm}/{task}-{prompt}"] = round(time.time() - start)
                print(f"features {lm} {task} {prompt}: {seconds[f'{lm}/{task}-{prompt}']} s", flush=True)
    return {"seconds": seconds}


def save_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


# ----------------------------------------------------------------------------- probes


def seed_rows(seed_index: int, args) -> slice:
    return slice(seed_index * args.n_train, (seed_index + 1) * args.n_train)


def probe_accuracies(X: dict, y: dict, args) -> list[float]:
    """Test accuracy of the dev-selected probe, one per seed (each seed its own disjoint training set)."""
    return probe_unit(X, y, len(args.seeds), args.n_train, list(args.l2_grid))


def probe_unit(X: dict, y: dict, n_seeds: int, n_train: int, l2_grid: list[float]) -> list[float]:
    """:func:`probe_accuracies` with plain arguments (one unit of work of the ``--jobs`` pool)."""
    from reprlab.analysis.natural_tasks import select_probe

    out = []
    for k in range(n_seeds):
        rows = slice(k * n_train, (k + 1) * n_train)
        probe, _ = select_probe(X["train"][rows], y["train"][rows], X["dev"], y["dev"], l2_grid)
        out.append(probe.accuracy(X["test"], y["test"]))
    return out


def npz_probe_unit(path: str, key: str, y: dict, n_seeds: int, n_train: int, l2_grid: list[float]) -> list[float]:
    """A pool worker: read one feature (``{split}/{key}``) of one .npz file and probe it, on one thread."""
    one_thread_in_worker()
    arr = np.load(path)
    return probe_unit({s: arr[f"{s}/{key}"] for s in y}, y, n_seeds, n_train, l2_grid)


def one_thread_in_worker() -> None:
    """In a ``--jobs`` worker process, one torch thread (the workers share the cores)."""
    import multiprocessing

    import torch

    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)


def map_units(fn, units: list[tuple], jobs: int) -> list:
    """``[fn(*u) for u in units]``, in ``jobs`` spawned processes when ``jobs`` > 1 (same results, same order)."""
    if jobs <= 1 or len(units) <= 1:
        return [fn(*u) for u in units]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(units)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*units)))


def bow_accuracies(data: dict, y: dict, args) -> list[float]:
    """Bag-of-words logistic regression (scikit-learn), C chosen on dev like the probes' L2."""
    from reprlab.errors import require

    text = require("sklearn.feature_extraction.text", extra="analysis", package="scikit-learn")
    linear = require("sklearn.linear_model", extra="analysis", package="scikit-learn")
    out = []
    for k, _ in enumerate(args.seeds):
        rows = seed_rows(k, args)
        vec = text.CountVectorizer(lowercase=True, min_df=1)
        Xtr = vec.fit_transform(data["train"].texts[rows])
        Xdev, Xte = vec.transform(data["dev"].texts), vec.transform(data["test"].texts)
        best = max(((linear.LogisticRegression(C=1.0 / (l2 * Xtr.shape[0]), max_iter=2000).fit(Xtr, y["train"][rows]),
                     l2) for l2 in args.l2_grid), key=lambda m: m[0].score(Xdev, y["dev"]))
        out.append(float(best[0].score(Xte, y["test"])))
    return out


def run_probes(args) -> dict:
    """Probe accuracies (3 seeds) of every cached feature, the baselines and zero-shot, per task.

    The probe fits are independent units (one feature of one LM x prompt x task, all seeds), run in
    ``--jobs`` processes."""
    from reprlab.analysis.natural_tasks import zero_shot

    results, units, where = {}, [], []
    for task in ("sst2", "agnews"):
        data = task_data(task, args)
        names = data["names"]
        y = {s: np.asarray(data[s].label_ids(names)) for s in ("train", "dev", "test")}
        record = {"sizes": {s: len(data[s]) for s in ("train", "dev", "test")}, "n_train": args.n_train,
                  "majority": float(np.mean(y["test"] == np.bincount(y["train"]).argmax())),
                  "bow": summary(bow_accuracies(data, y, args)), "rows": {}}
        common_args = (y, len(args.seeds), args.n_train, list(args.l2_grid))
        sent = args.work_dir / "features" / "minilm-sentence" / f"{task}.npz"
        if sent.is_file():
            units.append((str(sent), "emb", *common_args))
            where.append((task, None, "minilm_sentence"))
        classes = [[SUBSETS[task].index(w) for w in ZERO_SHOT[task][n]] for n in names]
        for lm in LMS:
            for prompt in ("none", "prompt"):
                path = args.work_dir / "features" / lm / f"{task}-{prompt}.npz"
                if not path.is_file():
                    continue
                arr = np.load(path)
                record["rows"][f"{lm}/{prompt}"] = {
                    "zero_shot": float(np.mean(zero_shot(arr["test/p_subset"], classes) == y["test"]))}
                for f in FEATURE_NAMES:
                    units.append((str(path), f, *common_args))
                    where.append((task, f"{lm}/{prompt}", f))
        results[task] = record
    for (task, key, f), accs in zip(where, map_units(npz_probe_unit, units, args.jobs)):
        target = results[task] if key is None else results[task]["rows"][key]
        target[f] = summary(accs)
    for task, record in results.items():
        for key, row in record["rows"].items():
            row.update({f: row.pop(f) for f in (*FEATURE_NAMES, "zero_shot")})  # the table's column order
            print(f"probes {task} {key}: " + ", ".join(f"{f} {row[f]['mean']:.3f}" for f in FEATURE_NAMES)
                  + f", zero-shot {row['zero_shot']:.3f}", flush=True)
    return results


# ----------------------------------------------------------------------------- synthetic


def run_synthetic_part(args) -> dict:
    from dataclasses import asdict

    from reprlab.analysis.natural_tasks import SyntheticConfig, fit_power

    config = SyntheticConfig.tiny(seeds=tuple(args.seeds[:1])) if args.quick else SyntheticConfig(
        seeds=tuple(args.seeds), **({"steps": args.synthetic_steps, "snapshots": tuple(
            s for s in SyntheticConfig.snapshots if s <= args.synthetic_steps)} if args.synthetic_steps else {}))
    start = time.time()
    # run_synthetic's loop over seeds, one process per seed (each seed is independent and seeded)
    per_seed = map_units(synthetic_seed, [(config, seed) for seed in config.seeds], args.jobs)
    out = {"config": asdict(config), "records": [r for records in per_seed for r in records]}
    fits = {}
    for loss, feats in (("ce", ("f", "p_subset", "phi_p")), ("quad", ("f", "p_subset", "phi_p"))):
        recs = [r for r in out["records"] if r["loss"] == loss]
        for f in feats:
            fits[f"{loss}/{f}"] = fit_power([r["epsilon"] for r in recs], [r["errors"][f] for r in recs])
    out["fits"] = fits
    out["seconds"] = round(time.time() - start)
    return out


def synthetic_seed(config, seed: int) -> list[dict]:
    """A pool worker: :func:`run_seed` of one seed on one thread."""
    from reprlab.analysis.natural_tasks.synthetic import run_seed

    one_thread_in_worker()
    return run_seed(config, seed)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 parents=[common.bench_options(append=False, work_dir="/tmp/reprlab-bench-natural")])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from: {', '.join(PARTS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=2000, help="probe training examples per seed (disjoint sets)")
    ap.add_argument("--n-dev", type=int, default=1000, help="dev examples for the L2 choice")
    ap.add_argument("--n-test", type=int, default=0, help="test examples (0 = the whole test file)")
    ap.add_argument("--l2-grid", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    ap.add_argument("--held-out", type=int, default=1000, help="held-out texts for the LMs' cross-entropy")
    ap.add_argument("--max-texts", type=int, default=None, help="LM corpus: read at most this many texts")
    ap.add_argument("--max-length", type=int, default=64, help="LM training: word pieces per chunk")
    ap.add_argument("--feature-max-length", type=int, default=64, help="features: pieces per text with the prompt")
    ap.add_argument("--batch-size", type=int, default=32, help="LM training batch (chunks)")
    ap.add_argument("--head-steps", type=int, default=600, help="MiniLM: steps of head-only training")
    ap.add_argument("--head-lr", type=float, default=2e-3)
    ap.add_argument("--mlm-steps", type=int, default=2000, help="minilm-mlm: steps of whole-model MLM training")
    ap.add_argument("--mlm-lr", type=float, default=1e-4)
    ap.add_argument("--scratch-steps", type=int, default=3000, help="from-scratch LMs: training steps")
    ap.add_argument("--scratch-lr", type=float, default=1e-3)
    ap.add_argument("--scratch-hidden", type=int, default=128)
    ap.add_argument("--scratch-layers", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=1, help="processes for the probe fits and the synthetic seeds")
    ap.add_argument("--synthetic-steps", type=int, default=None,
                    help="synthetic LMs' training steps (default: SyntheticConfig's, 3000)")
    ap.add_argument("--table", action="store_true", help="only print the tables of the saved results and redraw their plots")
    args = common.parse(ap, argv)
    if args.quick:
        args.n_train, args.n_dev, args.n_test, args.held_out = 40, 30, 60, 30
        args.head_steps, args.mlm_steps, args.scratch_steps, args.max_length, args.l2_grid = 3, 3, 3, 32, [1e-2, 1.0]
        args.scratch_hidden, args.scratch_layers = 32, 1
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    args.part_list = parts
    return args


def run_part(part: str, args) -> dict:
    if part == "synthetic":
        return {"synthetic": run_synthetic_part(args)}
    if part in LMS:
        saved = {"lms": {part: train_lm(part, args)}}
        if part == "minilm-head":
            saved["minilm-fresh-head"] = fresh_head_reference(args)
        return saved
    if part == "features":
        return {"features": extract_all(args)}
    return {"probes": run_probes(args)}


def merge(saved: dict, record: dict) -> dict:
    """``record`` into ``saved``: LMs and probe rows by name (so LMs trained in separate runs, even on
    separate machines, share one table: the probe data are the same seeded samples), the rest replaced."""
    for key, value in record.items():
        if key == "lms":
            saved.setdefault("lms", {}).update(value)
        elif key == "probes":
            for task, rec in value.items():
                old = saved.get("probes", {}).get(task, {})
                same_data = (old.get("sizes"), old.get("n_train")) == (rec["sizes"], rec["n_train"])
                rows = {**(old.get("rows", {}) if same_data else {}), **rec["rows"]}
                saved.setdefault("probes", {})[task] = {**rec, "rows": {k: rows[k] for k in sorted(rows, key=row_order)}}
        else:
            saved[key] = value
    return saved


def row_order(key: str) -> tuple[int, str]:
    lm, prompt = key.split("/")
    return (LMS.index(lm) if lm in LMS else len(LMS), prompt)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = common.result_path(NAME, args)
    saved = {k: v for k, v in common.read_result(out).items() if k not in ("machine", "date", "command")}
    if not args.table:
        logging.getLogger("reprlab").setLevel("WARNING")
        for part in args.part_list:
            print(f"=== {part}", flush=True)
            start = time.time()
            record = run_part(part, args)
            # re-read before merging: another run may have recorded other parts meanwhile
            saved = {k: v for k, v in common.read_result(out).items() if k not in ("machine", "date", "command")}
            saved = merge(saved, record)
            saved.setdefault("commands", {})[part] = common.command_line(argv)
            saved.setdefault("part_seconds", {})[part] = round(time.time() - start)
            saved["args"] = {k: v for k, v in common.settings(args).items() if k not in ("parts", "part_list", "table")}
            common.write_result(NAME, saved, args, argv)
            if part in ("synthetic", "probes"):
                plot_all({part: saved[part]}, out)
    else:
        plot_all(saved, out)
    print(table(saved))
    print(claims(saved))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
