"""``reprlab recommend``: the top items for a user from a Deep Retrieval model folder (``reprlab train
deep-retrieval``), with titles from the data's ``u.item``."""

from __future__ import annotations

import json

from reprlab.cli_format import print_table, short


def cmd_recommend(args) -> None:
    from reprlab.recsys.recipe import Recommender

    recommender = Recommender.load(args.model)
    found = recommender.recommend(args.user, k=args.k, beam=args.beam, rerank=not args.no_rerank)
    rows = [{"rank": r, "item": f.item, "title": f.title, "score": f.score} for r, f in enumerate(found, 1)]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    print_table([{**row, "title": short(row["title"], 60), "score": f"{row['score']:.3f}"} for row in rows],
                ["rank", "item", "title", "score"])


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _user_id(text: str) -> int:
    import argparse

    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a user id is an integer, got {text!r}") from None


def add_commands(sub) -> None:
    p = sub.add_parser("recommend", help="top items for a user from a Deep Retrieval model (beam search + reranker)")
    p.add_argument("--model", required=True, help="model folder (OUT/model of `reprlab train deep-retrieval`) "
                   "(required)")
    p.add_argument("--user", required=True, type=_user_id, help="the user's id in the training data (required)")
    p.add_argument("-k", type=_positive, default=10, help="items shown (default: 10)")
    p.add_argument("--beam", type=_positive, default=None, help="paths kept by beam search (default: the model's)")
    p.add_argument("--no-rerank", action="store_true", help="order by path probability instead of the reranker")
    p.add_argument("--json", action="store_true", help="print the items as one JSON list")
    p.set_defaults(func=cmd_recommend)
