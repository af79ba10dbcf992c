"""Deep Retrieval's serving cost against brute force as the catalogue grows, with a balanced item->path mapping.

A timing unit, not a quality result: untrained models of the benchmark's scaling shapes (D = 3, K the smallest
with K^D >= N, J = 1, B = 50, reranker; two-tower dim 32), the item->path mapping random (about one item per
path, the balance the size penalty aims at), 1,000 users with random feature vectors. For each catalogue size:
the items each user's beam retrieves and the milliseconds per 1,000 users of :func:`retrieve` (beam search,
the gathering of the beam's items from the path index, the reranker, top 50) and of brute force over all items
(median and spread of 3 passes, 1 thread, in batches of 256 users). It shows what the structure costs when the
mapping is balanced; what the learned mappings look like is in ``bench/deep_retrieval.py``'s scaling part.

    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/deep_retrieval_serving.py
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import common
from reprlab.recsys.deep_retrieval import DeepRetrieval, DRModelConfig, retrieve
from reprlab.recsys.path_mapping import PathIndex, path_codes, path_statistics
from reprlab.recsys.two_tower import TwoTower, TwoTowerConfig, brute_force_topk

NAME = "deep_retrieval_serving"
FEATURES = 16


def options(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                parents=[common.bench_options(device=None, threads=1, append=False)])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--passes", type=int, default=3)
    args = common.parse(p, argv)
    if args.quick:
        args.sizes, args.users = "2000,20000", 300
    args.sizes = [int(s) for s in args.sizes.split(",")]
    return args


def timed(fn, batches, passes: int) -> tuple[float, float, float]:
    """(median ms per 1,000 users, spread, mean items scored) over ``passes`` passes."""
    seconds, scored = [], 0.0
    users = sum(len(b["features"]) for b in batches)
    for _ in range(passes):
        start = time.perf_counter()
        counts = [fn(b)[1] for b in batches]
        seconds.append(time.perf_counter() - start)
        scored = float(torch.cat(counts).float().mean())
    median = statistics.median(seconds)
    return 1e6 * median / users, (max(seconds) - min(seconds)) / median, scored


@torch.no_grad()
def main(argv=None) -> None:
    args = options(argv)
    torch.manual_seed(0)
    features = torch.randn(args.users, FEATURES)
    batches = [{"features": features[s:s + 256]} for s in range(0, args.users, 256)]
    points = []
    for n in args.sizes:
        width = max(2, math.ceil(n ** (1.0 / 3) - 1e-9))
        dr = DeepRetrieval(DRModelConfig(num_items=n, depth=3, width=width, user_input="features",
                                         feature_dim=FEATURES, dim=32, hidden=128, node_dim=16)).eval()
        index = PathIndex(path_codes(dr.item_paths, width), width ** 3)
        tt = TwoTower(TwoTowerConfig(num_items=n, user_input="features", feature_dim=FEATURES, dim=32)).eval()
        dr_ms, dr_spread, dr_scored = timed(
            lambda b: retrieve(dr, index, dr.encode(b), beam=args.beam, k=50), batches, args.passes)
        bf_ms, bf_spread, _ = timed(lambda b: brute_force_topk(tt, b, 50), batches, args.passes)
        point = {"items": n, "K": width, "paths": path_statistics(path_codes(dr.item_paths, width), width ** 3),
                 "dr": {"ms_per_1000": round(dr_ms, 1), "spread": round(dr_spread, 3), "items_scored": dr_scored},
                 "brute_force": {"ms_per_1000": round(bf_ms, 1), "spread": round(bf_spread, 3), "items_scored": n}}
        print(point, flush=True)
        points.append(point)
    common.write_result(NAME, {"beam": args.beam, "users": args.users, "passes": args.passes, "points": points},
                        args, argv)


if __name__ == "__main__":
    main()
