"""The teacher table of ``bench/reader_distill.py`` (``--stages teachers``): on the dev slice, how well each reader
signal ranks the gold among the first retriever's candidates, and the temperature that gives it the student's spread
(split from the script to keep each file readable; imported by it)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from reader_distill_report import KS


def fid_variants(reader, questions, passages, bf16: bool) -> dict[str, list[np.ndarray]]:
    """The FiD reader's passage scores under every aggregation option, from one pass per batch of two questions:
    pre/post-softmax x first/all decoded tokens x all/first half/second half of the decoder layers."""
    import torch

    from reprlab.qa.fid import aggregate_cross_attention
    from reprlab.qa.fid.generate import greedy

    nl = len(reader.decoder)
    layer_sets = {"all": None, "lower": list(range(nl // 2)), "upper": list(range(nl // 2, nl))}
    layer_sets = {k: v for k, v in layer_sets.items() if v is None or v}
    out: dict[str, list[np.ndarray]] = {}
    for lo in range(0, len(questions), 2):
        qs, ps = questions[lo: lo + 2], passages[lo: lo + 2]
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            batch = reader.featurize(qs, ps)
            memory, mask = reader.encode(batch)
            kv = reader.memory_kv(memory)
            answers = greedy(reader, kv, mask, reader.config.answer_max_length)
            T = 1 + max(len(a) for a in answers)
            prefix = torch.full((len(qs), T), reader.pad_id, dtype=torch.long)
            for b, a in enumerate(answers):
                prefix[b, : len(a) + 1] = torch.tensor([reader.bos_id, *a])
            _, scores = reader.decode(prefix, kv, mask, output_scores=True)
        tokens = batch.attention_mask.bool() & batch.passage_mask[:, :, None]
        lengths = torch.tensor([1 + len(a) for a in answers])
        masks = {"first": torch.arange(T)[None] < 1, "all": torch.arange(T)[None] < lengths[:, None]}
        for softmax in ("pre", "post"):
            for which, token_mask in masks.items():
                for name, layers in layer_sets.items():
                    agg = aggregate_cross_attention(scores, tokens, token_mask.expand(len(qs), T), softmax, layers)
                    out.setdefault(f"fid {softmax}-softmax, {which} token(s), {name} layers", []).extend(
                        agg[b, : len(p)].float().numpy() for b, p in enumerate(ps))
    return out


def teacher_table(args, files, fid_model: Path | None, ext_model: Path | None) -> dict:
    """On the dev slice: the gold recall@k, among the first retriever's candidates, of the ranking by every
    teacher signal (FiD aggregations, when there is a FiD reader; the extractive reader's span and
    question-attention scores, when there is an extractive one)."""
    from reprlab.qa.fid import FidReader
    from reprlab.qa.open_qa import load_open_qa, mean_recall, rank_pool
    from reprlab.qa.teachers import ScoringConfig, load_teacher

    reader = FidReader.from_pretrained(fid_model) if fid_model is not None else None
    n = 3 if args.quick else args.candidates
    table = {}
    for name, path in files.items():
        data = load_open_qa(path)
        questions = [q for q in data.split(args.eval_fraction, args.dev_fraction).dev if q.gold]
        ranked = rank_pool(args.first_retriever, data.corpus, questions, n)
        ids = [[d for d, _ in ranked[q.id]] for q in questions]
        passages = [[(data.corpus[d]["title"], data.corpus[d]["text"]) for d in row] for row in ids]
        signals, seconds = {}, {}
        if reader is not None:
            t0 = time.time()
            signals = fid_variants(reader, [q.question for q in questions], passages, args.bf16)
            seconds["fid (all variants, one pass)"] = time.time() - t0
        if ext_model is not None:
            for signal in ("span", "question-attention", "span-null"):
                t0 = time.time()
                teacher = load_teacher(ext_model, ScoringConfig(signal=signal, bf16=args.bf16))
                signals[f"extractive {signal}"] = teacher.score_passages([q.question for q in questions], passages)
                seconds[f"extractive {signal}"] = time.time() - t0
        spread = {k: float(np.mean([np.std(x) for x in v])) for k, v in signals.items()}
        student = student_spread(args, data, questions, ids)
        rows = {f"{args.first_retriever} (the candidates' order)": mean_recall(
            {q.id: row for q, row in zip(questions, ids)}, questions, KS)}
        for signal, scores in signals.items():
            ranking = {q.id: [row[i] for i in np.argsort(-s, kind="stable")] for q, row, s in zip(questions, ids, scores)}
            rows[signal] = mean_recall(ranking, questions, KS)
        table[name] = {"questions": len(questions), "candidates": n, "rows": rows, "seconds": seconds,
                       "score_std": spread, "student_score_std": student,
                       "matching_temperature": {k: v / student for k, v in spread.items()}}
    return table


def student_spread(args, data, questions, ids, scale: float = 20.0) -> float:
    """Mean over questions of the std of the untrained student's scores (scale x cosine) over its candidates:
    a teacher temperature that gives the teacher's scores the same spread is ``teacher std / this``."""
    from reprlab.encoder import SentenceEncoder
    from reprlab.text.beir import doc_text

    model = SentenceEncoder.from_pretrained(args.encoder)
    q = model.encode([x.question for x in questions], show_progress=False)
    stds = []
    for qv, row in zip(q, ids):
        p = model.encode([doc_text(data.corpus[d]) for d in row], show_progress=False)
        stds.append(float(np.std(scale * p @ qv)))
    return float(np.mean(stds))
