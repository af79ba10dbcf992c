"""``reprlab answer``: extract an answer with a trained reader from a given text or an index's top passages."""

from __future__ import annotations

import json

from reprlab.cli_format import print_table, short
from reprlab.errors import ReprlabError


def cmd_answer(args) -> None:
    from reprlab.qa.reader import load_reader

    if not args.question.strip():
        raise ReprlabError("--question is empty")
    if args.k < 1 or args.top < 1:
        raise ReprlabError("-k and --top must be at least 1")
    if args.context is not None and not args.context.strip():
        raise ReprlabError("--context is empty")
    reader = load_reader(args.model)
    ids, docs, contexts = None, {}, [args.context]
    if args.index is not None:
        from reprlab.retrieval.dense import DenseRetriever

        retriever = DenseRetriever.load(args.index)
        if not retriever.docs:
            raise ReprlabError(f"{args.index} has no docs.jsonl (the passages' texts); rebuild it with `reprlab index`")
        _, found = retriever.search([args.question], k=args.k)
        ids = [d for d in found[0] if d is not None]
        docs = retriever.docs
        contexts = [docs[d].get("text", "") for d in ids]
    answers = reader.answer(args.question, contexts, top_k=args.top, context_ids=ids)
    rows = []
    for rank, a in enumerate(answers, 1):
        row = {"rank": rank, "answer": a.text, "score": round(a.score, 4), "start": a.start, "end": a.end}
        if ids is not None:
            row.update(passage=a.context_id, title=docs[a.context_id].get("title", ""))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    print(f"Q: {args.question}")
    columns = ["rank", "answer", "score"] + (["passage", "title"] if ids is not None else [])
    print_table([{**r, "answer": short(r["answer"], 60), "score": f"{r['score']:.3f}",
                  "title": short(r.get("title", ""), 50)} for r in rows], columns)


def add_commands(sub) -> None:
    p = sub.add_parser("answer", help="extract an answer with a reader from --context or an index's top passages")
    p.add_argument("--model", required=True, help="reader folder (from `reprlab train reader`) (required)")
    p.add_argument("--question", required=True, help="the question (required)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--context", help="the text to read")
    source.add_argument("--index", help="index folder (`reprlab index`): read the top -k passages")
    p.add_argument("-k", type=int, default=5, help="passages read with --index (default: 5)")
    p.add_argument("--top", type=int, default=1, help="answers shown (default: 1)")
    p.add_argument("--json", action="store_true", help="print the answers as one JSON list")
    p.set_defaults(func=cmd_answer)
