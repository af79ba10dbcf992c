"""JAKET benchmark: link prediction on WN18RR, entity categories of held-out WN18RR entities, and few-shot
relation types on UMLS, a KG the model never saw.

Stages (each cached in --work-dir, so a rerun skips what is done):

1. ``vectors``: MiniLM's description vectors of both KGs in one pass: the mean-pooled output of layer
   ``--lm1-layers`` (LM1, JAKET's memory) and of the last layer (LM-only); written as the recipe's
   memory cache too.
2. ``pretrain``: ``reprlab pretrain jaket`` on WN18RR (its glosses linked to their neighbours, WordNet
   lexnames as categories) for ``--steps`` steps.
3. ``link``: WN18RR filtered MRR / Hits on test: pykeen TransE, DistMult, RotatE (time-boxed); the
   description vectors with no graph (text only); the knowledge module fresh; the module from JAKET.
4. ``category``: linear probes of categories on held-out entities: LM-only vectors, LM1 vectors,
   a fresh module, JAKET's module (3 seeds).
5. ``relation``: UMLS relation types from 1, 5, 20 labelled triples per relation (3 seeds): JAKET,
   the same LM1 with a fresh module, pykeen models trained on those triples.

    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/jaket.py            # full run
    python bench/jaket.py --quick                                          # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from reprlab.text.kg import KnowledgeGraph, read_kg  # noqa: E402

logger = logging.getLogger("reprlab")
SEEDS = (0, 1, 2)
SHOTS = (1, 5, 20)
PUBLISHED = {  # WN18RR test MRR as published
    "TransE": (0.226, "Sun et al. 2019, RotatE paper (ICLR), Table 5 (TransE re-run by the authors)"),
    "DistMult": (0.43, "Dettmers et al. 2018, ConvE paper (AAAI), Table 5"),
    "RotatE": (0.476, "Sun et al. 2019, RotatE paper (ICLR), Table 5"),
}


def options(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[common.bench_options(work_dir="runs/bench-jaket")],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wn18rr", type=Path, default=common.data_path("wn18rr_text", check=False))
    p.add_argument("--umls", type=Path, default=common.data_path("umls_text", check=False))
    p.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet database (apt-get install wordnet-base)")
    p.add_argument("--lm1-layers", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="JAKET pre-training steps (batch 16)")
    p.add_argument("--link-steps", type=int, default=40, help="link-prediction fine-tuning steps per variant")
    p.add_argument("--pykeen-minutes", type=float, default=2.0, help="training time of each pykeen model on WN18RR")
    p.add_argument("--stages", nargs="+", default=["vectors", "pretrain", "link", "category", "relation"])
    return common.parse(p, argv)


# ----------------------------------------------------------------------------- stage 1: description vectors


@torch.no_grad()
def encode_layers(texts: list[str], layers: tuple[int, ...], max_length: int = 32, batch_size: int = 128):
    """MiniLM's mean-pooled output of each of ``layers`` for ``texts`` (one pass): {layer: (N, H)}."""
    from reprlab.encoder import Encoder
    from reprlab.logs import progress
    from reprlab.text.tokenizer import Tokenizer

    enc, tok = Encoder.from_pretrained("minilm").eval(), Tokenizer.from_pretrained("minilm")
    out = {k: torch.zeros(len(texts), enc.config.hidden_size) for k in layers}
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for s in progress(range(0, len(texts), batch_size), desc="encode", unit="batch"):
        idx = torch.as_tensor(order[s:s + batch_size])
        b = tok([texts[i] for i in idx], max_length=max_length)
        hs = enc(b.input_ids, b.attention_mask, output_hidden_states=True).hidden_states
        m = b.attention_mask.unsqueeze(-1).float()
        for k in layers:
            out[k][idx] = (hs[k] * m).sum(1) / m.sum(1)
    return out


def vectors_stage(name: str, kg: KnowledgeGraph, args) -> dict:
    """{"lm1": (ents, rels), "lm": (ents, rels)} for ``kg``, cached; also the recipe's memory cache file."""
    from safetensors.torch import load_file, save_file

    path = args.work_dir / f"vectors-{name}.safetensors"
    if not path.is_file():
        t0 = time.time()
        L = 6
        ents = encode_layers(kg.entity_text, (args.lm1_layers, L))
        rels = encode_layers(kg.relation_text, (args.lm1_layers, L))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"lm1_entities": ents[args.lm1_layers], "lm1_relations": rels[args.lm1_layers],
                   "lm_entities": ents[L], "lm_relations": rels[L]}, str(path),
                  metadata={"digest": kg.digest(), "seconds": f"{time.time() - t0:.1f}"})
    v = load_file(str(path))
    return {"lm1": (v["lm1_entities"], v["lm1_relations"]), "lm": (v["lm_entities"], v["lm_relations"])}


def write_memory_cache(path: Path, kg: KnowledgeGraph, vectors, args) -> None:
    from safetensors.torch import save_file

    from reprlab.hub import resolve_model_path

    key = {"model": str(resolve_model_path("minilm")), "lm1_layers": str(args.lm1_layers), "desc_max_length": "32",
           "texts_sha256": kg.digest()}
    save_file({"entities": vectors[0].contiguous(), "relations": vectors[1].contiguous()}, str(path), metadata=key)



# ----------------------------------------------------------------------------- stage 2: pre-training


def linking_sample(kg: KnowledgeGraph, path: Path, n: int = 100) -> None:
    """``n`` linked mentions drawn at random (seed 0) for a hand check: text, mention, linked entity's text."""
    from reprlab.text.kg import link_mentions

    flat = [(t, m) for t in link_mentions(kg) for m in t.mentions]
    rng = np.random.default_rng(0)
    rows = ["i\tmention\tlinked entity\ttext"]
    for i, k in enumerate(sorted(rng.choice(len(flat), size=n, replace=False))):
        t, (a, b, e) = flat[k]
        rows.append(f"{i}\t{t.text[a:b]}\t{kg.entity_text[e]}\t{t.text}")
    path.write_text("\n".join(rows) + "\n")


def pretrain_stage(wn: KnowledgeGraph, vectors: dict, args) -> Path:
    from reprlab.pretrain.jaket import JaketConfig, run_jaket
    from reprlab.text.kg import read_wordnet_lexnames

    out = args.work_dir / "pretrain"
    if (out / "model" / "jaket.json").is_file():
        return out / "model"
    cats = args.work_dir / "wn18rr-lexnames.tsv"
    if not cats.is_file():
        lex = read_wordnet_lexnames(wn, args.wordnet)
        cats.write_text("".join(f"{e}\t{c}\n" for e, c in lex.items()))
    cache = args.work_dir / "memory-wn18rr.safetensors"
    write_memory_cache(cache, wn, vectors["lm1"], args)
    config = JaketConfig(kg=str(wn.path), categories=str(cats), output_dir=str(out), model="minilm",
                         lm1_layers=args.lm1_layers, memory_refresh_every=0, memory_cache=str(cache),
                         max_steps=args.steps, batch_size=16, device=args.device, checkpoint_every=20,
                         checkpoint_minutes=0, log_every=5, resume=(out / "checkpoints").is_dir())
    t0 = time.time()
    result = run_jaket(config)
    (args.work_dir / "pretrain-seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    return result.model_dir


# ----------------------------------------------------------------------------- pykeen baselines


def pykeen_model(name: str, tf, seed: int, dim: int):
    from pykeen.models import DistMult, RotatE, TransE

    cls = {"TransE": TransE, "DistMult": DistMult, "RotatE": RotatE}[name]
    return cls(triples_factory=tf, embedding_dim=dim // 2 if name == "RotatE" else dim, random_seed=seed)


def pykeen_train(name: str, kg: KnowledgeGraph, triples: np.ndarray, seed: int, minutes: float, dim: int = 200,
                 max_epochs: int = 10_000, batch_size: int = 512):
    """A pykeen model trained on ``triples`` (our indices) with sLCWA, 32 negatives, Adam 1e-3, for at most
    ``minutes`` of wall time or ``max_epochs``."""
    from pykeen.training import SLCWATrainingLoop
    from pykeen.triples import CoreTriplesFactory

    tf = CoreTriplesFactory(torch.as_tensor(triples, dtype=torch.long), num_entities=kg.num_entities,
                            num_relations=kg.num_relations)
    model = pykeen_model(name, tf, seed, dim)
    loop = SLCWATrainingLoop(model=model, triples_factory=tf, optimizer="Adam", optimizer_kwargs={"lr": 1e-3},
                             negative_sampler_kwargs={"num_negs_per_pos": 32})
    t0, epochs = time.time(), 0
    while time.time() - t0 < 60 * minutes and epochs < max_epochs:
        loop.train(tf, num_epochs=epochs + 1, batch_size=min(batch_size, len(triples)), use_tqdm=False,
                   continue_training=epochs > 0)
        epochs += 1
    return model, epochs, time.time() - t0


@torch.no_grad()
def pykeen_link_metrics(model, kg: KnowledgeGraph) -> dict:
    from pykeen.evaluation import RankBasedEvaluator

    ev = RankBasedEvaluator(filtered=True)
    known = [torch.as_tensor(kg.split(s)) for s in ("train", "dev")]
    r = ev.evaluate(model, torch.as_tensor(kg.split("test")), additional_filter_triples=known, use_tqdm=False,
                    batch_size=256)
    return {"mrr": float(r.get_metric("both.realistic.inverse_harmonic_mean_rank")),
            **{f"hits@{k}": float(r.get_metric(f"both.realistic.hits_at_{k}")) for k in (1, 3, 10)}}


@torch.no_grad()
def pykeen_relation_accuracy(model, kg: KnowledgeGraph) -> dict:
    test = kg.split("test")
    scores = model.score_r(torch.as_tensor(test[:, [0, 2]]))  # (n, R)
    pred = scores.argmax(1).numpy()
    holds: dict = {}
    for a, b, c in kg.edges(tuple(kg.triples)):
        holds.setdefault((int(a), int(c)), set()).add(int(b))
    ok = [int(p) in holds[(int(a), int(c))] for p, (a, _, c) in zip(pred, test)]
    return {"accuracy": float(np.mean(ok)), "exact_accuracy": float(np.mean(pred == test[:, 1]))}


# ----------------------------------------------------------------------------- stages 3-5


def kg_vectors(pair, shape=(128, 2, 2, "sub"), source=""):
    from reprlab.pretrain.jaket.tasks import KGVectors

    return KGVectors(pair[0], pair[1], km_shape=shape, source=source)


def link_stage(wn, vectors, jaket_dir, args, record) -> None:
    from reprlab.pretrain.jaket import tasks

    rows = record.setdefault("link", {})
    variants = {"text only (LM vectors, no graph)": (kg_vectors(vectors["lm"]), False),
                "KM, no JAKET pre-training (LM1 vectors)": (kg_vectors(vectors["lm1"]), True),
                "KM from JAKET (memory + KM pre-trained)": (tasks.description_vectors(jaket_dir, wn), True)}
    for name, (v, graph) in variants.items():
        if name in rows:
            continue
        t0 = time.time()
        m = tasks.link_prediction(v, wn, graph=graph, steps=args.link_steps, batch_size=256, seed=0,
                                  max_queries=50 if args.quick else None)
        rows[name] = {**m, "seconds": round(time.time() - t0, 1), "steps": args.link_steps}
        save(record, args)
    for name in ("TransE", "DistMult", "RotatE"):
        key = f"pykeen {name}"
        if key in rows:
            continue
        model, epochs, seconds = pykeen_train(name, wn, wn.split("train"), 0, args.pykeen_minutes,
                                              max_epochs=1 if args.quick else 10_000)
        rows[key] = {**pykeen_link_metrics(model, wn), "epochs": epochs, "seconds": round(seconds, 1),
                     "published_mrr": PUBLISHED[name][0], "published_in": PUBLISHED[name][1]}
        save(record, args)


def category_stage(wn, vectors, jaket_dir, args, record) -> None:
    from reprlab.pretrain.jaket import tasks
    from reprlab.text.kg import read_categories

    cats = read_categories(args.work_dir / "wn18rr-lexnames.tsv", wn)
    rows = record.setdefault("category", {})
    variants = {"LM only (MiniLM sentence vectors)": (kg_vectors(vectors["lm"]), False),
                "LM1 vectors (layer 3)": (kg_vectors(vectors["lm1"]), False),
                "KM, no JAKET pre-training": (kg_vectors(vectors["lm1"]), True),
                "JAKET (pre-trained KM)": (tasks.description_vectors(jaket_dir, wn), True)}
    for name, (v, use_km) in variants.items():
        if name not in rows:
            runs = [tasks.category_prediction(v, wn, cats, use_km=use_km, seed=s) for s in SEEDS]
            rows[name] = summarise([r["accuracy"] for r in runs], runs[0])
            save(record, args)


def relation_stage(umls, vectors, jaket_dir, args, record) -> None:
    from reprlab.pretrain.jaket import tasks

    rows = record.setdefault("relation", {})
    variants = {"JAKET (WN18RR-pretrained LM1, KM, pair head)": tasks.description_vectors(jaket_dir, umls),
                "same LM1 (MiniLM), fresh KM and head": kg_vectors(vectors["lm1"]),
                "LM only (MiniLM sentence vectors), fresh KM and head": kg_vectors(vectors["lm"])}
    steps = 20 if args.quick else 200
    for shots in SHOTS:
        for name, v in variants.items():
            key = f"{name} | {shots}-shot"
            if key not in rows:
                runs = [tasks.relation_prediction(v, umls, shots=shots, steps=steps, seed=s) for s in SEEDS]
                rows[key] = summarise([r["accuracy"] for r in runs], runs[0])
                save(record, args)
        for name in ("TransE", "DistMult", "RotatE"):
            key = f"pykeen {name} | {shots}-shot"
            if key not in rows:
                accs = []
                for s in SEEDS:
                    few = tasks.few_shot_triples(umls, shots, s)
                    model, _, _ = pykeen_train(name, umls, few, s, minutes=0.5, dim=64, max_epochs=5 if args.quick else 200)
                    accs.append(pykeen_relation_accuracy(model, umls)["accuracy"])
                rows[key] = summarise(accs, {"labelled_triples": len(tasks.few_shot_triples(umls, shots, 0))})
                save(record, args)


def summarise(values, first: dict) -> dict:
    v = np.asarray(values)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "runs": [float(x) for x in v], **{k: x for k, x in first.items() if k not in ("accuracy", "exact_accuracy")}}


def save(record: dict, args) -> None:
    written = common.write_result("jaket", record, args)
    if not args.quick:
        (common.RESULTS / "jaket-tables.md").write_text(tables(written))


def tables(record: dict) -> str:
    """The result tables in markdown (for bench/results/jaket.md)."""
    out = [f"Command: `{record['command']}`. Machine: {record['machine']}. Date: {record['date']}.", ""]
    if record.get("link"):
        out += ["| WN18RR link prediction (filtered, test) | MRR | Hits@1 | Hits@10 | budget |", "|---|---|---|---|---|"]
        for name, r in record["link"].items():
            budget = f"{r.get('epochs', r.get('steps'))} {'epochs' if 'epochs' in r else 'steps'}, {r['seconds']:.0f} s"
            out.append(f"| {name} | {r['mrr']:.3f} | {r['hits@1']:.3f} | {r['hits@10']:.3f} | {budget} |")
        out.append("")
    for key, title in (("category", "Categories of held-out WN18RR entities (accuracy)"),
                       ("relation", "UMLS relation types, few-shot (accuracy)")):
        if record.get(key):  # relation rows are named "model | N-shot": a column of their own
            shots = key == "relation"
            out += [f"| {title} |{' shots |' if shots else ''} mean | std | runs |",
                    "|---|---|---|---|" + ("---|" if shots else "")]
            for name, r in record[key].items():
                out.append(f"| {name} | {r['mean']:.3f} | {r['std']:.3f} | {', '.join(f'{x:.3f}' for x in r['runs'])} |")
            out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    args = options(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    wn = read_kg(common.require(args.wn18rr))
    umls = read_kg(common.require(args.umls), "entity2textlong.txt")
    if args.quick:
        wn = quick_kg(wn, args.work_dir)
        args.steps, args.link_steps, args.pykeen_minutes = 2, 3, 0.05
    record = common.read_result(common.result_path("jaket", args))
    for key in ("machine", "date", "command"):
        record.pop(key, None)
    record["settings"] = common.settings(args)
    labels = common.RESULTS / "jaket-linking-labels.tsv"
    if labels.is_file():
        ok = [line.split("\t")[1] == "1" for line in labels.read_text().splitlines()[1:] if line.strip()]
        record["linking_precision"] = {"correct": sum(ok), "checked": len(ok), "precision": sum(ok) / len(ok),
                                       "sample": "bench/results/jaket-linking-sample.tsv",
                                       "labels": "bench/results/jaket-linking-labels.tsv"}
    vectors = {"umls": vectors_stage("umls", umls, args), "wn18rr": vectors_stage("wn18rr", wn, args)}
    sample = common.RESULTS / "jaket-linking-sample.tsv"
    if not args.quick and not sample.is_file():
        linking_sample(wn, sample)
    jaket_dir = pretrain_stage(wn, vectors["wn18rr"], args) if "pretrain" in args.stages or args.quick else \
        args.work_dir / "pretrain" / "model"
    if "category" in args.stages:  # the cheap stages first
        category_stage(wn, vectors["wn18rr"], jaket_dir, args, record)
    if "relation" in args.stages:
        relation_stage(umls, vectors["umls"], jaket_dir, args, record)
    if "link" in args.stages:
        link_stage(wn, vectors["wn18rr"], jaket_dir, args, record)
    save(record, args)


def quick_kg(kg: KnowledgeGraph, work: Path) -> KnowledgeGraph:
    """A ~700-entity slice of WN18RR (the triples among its first entities) for the smoke run."""
    from reprlab.text.kg import write_kg

    keep = np.zeros(kg.num_entities, dtype=bool)
    keep[np.unique(kg.split("train")[:400, [0, 2]])] = True
    keep[np.unique(kg.split("test")[:40, [0, 2]])] = True  # some entities seen only in test: held out
    index = np.cumsum(keep) - 1
    small = KnowledgeGraph([e for e, k in zip(kg.entities, keep) if k], [t for t, k in zip(kg.entity_text, keep) if k],
                           kg.relations, kg.relation_text)
    for name, t in kg.triples.items():
        t = t[keep[t[:, 0]] & keep[t[:, 2]]]
        small.triples[name] = np.stack([index[t[:, 0]], t[:, 1], index[t[:, 2]]], 1) if len(t) else t
    return read_kg(write_kg(work / "wn18rr-slice", small))


if __name__ == "__main__":
    main()
