"""Semantic hashing: angular similarity and its loss, SimHash collision rates, binary indexes, the recipe."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from reprlab.demo import demo_data_path
from reprlab.errors import ConfigError, ReprlabError
from reprlab.retrieval.binary import BinaryIndex, RandomHyperplanes, binary_retriever, build_binary_index
from reprlab.retrieval.hashing import (
    HashingConfig,
    angular_contrastive_loss,
    angular_similarity,
    run_hashing,
    safe_arccos,
)
from reprlab.retrieval.index import Index
from reprlab.retrieval.pipeline import evaluate_retriever
from reprlab.text.beir import load_beir
from reprlab.train import TrainConfig


def hamming(a_codes, b_codes):
    """Plain reference: (Q, N) Hamming distances between packed codes, by unpacking every bit."""
    x = a_codes[:, None, :] ^ b_codes[None, :, :]  # (Q, N, bytes)
    return np.unpackbits(x, axis=-1).sum(-1).astype(np.int64)  # (Q, N)


def pairs_at_angle(theta, m, d, rng):
    """m unit-vector pairs (x, y) at angle theta, in uniformly random orientations: (m, d), (m, d)."""
    x = rng.standard_normal((m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    u = rng.standard_normal((m, d))
    u -= (u * x).sum(1, keepdims=True) * x  # orthogonal to x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    y = np.cos(theta) * x + np.sin(theta) * u
    return x.astype(np.float32), y.astype(np.float32)


# ------------------------------------------------------------------- angular similarity and the loss


def test_safe_arccos_matches_arccos_inside_and_stays_finite_at_the_ends():
    x = torch.linspace(-0.99, 0.99, 41, dtype=torch.float64, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    safe_arccos(x).sum().backward()
    torch.arccos(y).sum().backward()
    torch.testing.assert_close(safe_arccos(x.detach()), torch.arccos(y.detach()))
    torch.testing.assert_close(x.grad, y.grad)
    ends = torch.tensor([-1.0, 1.0, 1.0000001], requires_grad=True)
    out = safe_arccos(ends)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), torch.tensor([math.pi, 0.0, 0.0]))
    assert torch.isfinite(ends.grad).all() and (ends.grad < 0).all()


def test_angular_similarity_is_one_minus_angle_over_pi():
    a = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # norms differ: only the direction counts
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor([1.0, 0.5, 0.0, 0.75])
    torch.testing.assert_close(angular_similarity(a, b), torch.stack([expected, expected]))


def test_loss_gradient_is_finite_when_cosines_are_plus_and_minus_one():
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], requires_grad=True)  # cosines exact in float32
    p = q.detach().clone().requires_grad_(True)  # cos(q_i, p_i) = 1
    n = (-q.detach()).clone().requires_grad_(True)  # cos(q_i, n_i) = -1
    for similarity in ("angular", "log-angular"):
        loss = angular_contrastive_loss(q, p, n, scale=50.0, similarity=similarity)
        grads = torch.autograd.grad(loss, (q, p, n))
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads), similarity
    # the plain arccos gives NaN here, which is what the clamped derivative prevents
    cos = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(p, dim=-1).T
    assert not torch.isfinite(torch.autograd.grad(torch.arccos(cos).sum(), q)[0]).all()


def test_loss_equals_a_plain_softmax_over_angular_similarities_with_masks():
    g = torch.Generator().manual_seed(0)
    q, pos, neg = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(6, 8, generator=g)
    # candidate doc ids: positives 10, 11, 12; negatives 20, 11 (relevant to query 0 too), 21, 22, 23, 24
    candidate_ids = torch.tensor([10, 11, 12, 20, 11, 21, 22, 23, 24])
    relevant = torch.tensor([[10, 11], [11, -1], [12, -1]])
    docs = torch.cat([pos, neg])
    for similarity, scale in (("angular", 50.0), ("log-angular", 16.0)):
        got = angular_contrastive_loss(q, pos, neg, scale=scale, similarity=similarity,
                                       candidate_ids=candidate_ids, query_positive_ids=relevant)
        total = 0.0
        for i in range(3):
            logits = []
            for j in range(9):
                if j != i and candidate_ids[j].item() in relevant[i].tolist():
                    continue  # another relevant document: not a negative
                cos = torch.dot(q[i], docs[j]) / (q[i].norm() * docs[j].norm())
                s = 1 - torch.arccos(cos) / math.pi
                logits.append(scale * (s if similarity == "angular" else torch.log(s)))
                if j == i:
                    target = len(logits) - 1
            total = total - torch.log_softmax(torch.stack(logits), 0)[target]
        torch.testing.assert_close(got, total / 3, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- SimHash codes


@pytest.mark.parametrize("theta_over_pi", [0.05, 0.2, 0.35, 0.5, 0.7, 0.9])
def test_collision_rate_estimates_one_minus_theta_over_pi(theta_over_pi):
    """Each bit of a pair at angle theta agrees with probability p = 1 - theta/pi, independently.

    With pairs in uniformly random orientations every (pair, hyperplane) agreement is an independent
    Bernoulli(p), so the rate over m pairs and b bits has standard deviation sqrt(p(1-p) / (m b)),
    and a single pair's rate sqrt(p(1-p) / b). Tolerances: 4 sigma (pooled), 5 sigma (every pair).
    """
    m, d, bits = 100, 48, 2048
    rng = np.random.default_rng(1234)
    x, y = pairs_at_angle(theta_over_pi * np.pi, m, d, rng)
    planes = RandomHyperplanes(d, bits, seed=7)
    rates = 1.0 - np.array([hamming(a[None], b[None])[0, 0] for a, b in zip(planes.encode(x), planes.encode(y))]) / bits
    p = 1.0 - theta_over_pi
    sigma = math.sqrt(p * (1 - p) / bits)
    assert abs(rates.mean() - p) < 4 * sigma / math.sqrt(m), (rates.mean(), p)
    assert np.abs(rates - p).max() < 5 * sigma, (np.abs(rates - p).max(), sigma)
    # the index reports the same estimate as its "angular" score
    index = BinaryIndex(d, bits, seed=7)
    index.add(["y"], y[:1])
    scores, _ = index.search(x[:1], k=1)
    assert scores[0, 0] == pytest.approx(rates[0], abs=1e-6)


def test_codes_are_the_packed_signs_and_seeded():
    x = np.random.default_rng(0).standard_normal((20, 12)).astype(np.float32)
    planes = RandomHyperplanes(12, 64, seed=3)
    codes = planes.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (20, 8)
    bits = np.unpackbits(codes, axis=1, bitorder="little").astype(bool)  # (20, 64): bit i = hyperplane i
    assert (bits == (x.astype(np.float64) @ planes.planes.T.astype(np.float64) > 0)).all()
    assert (RandomHyperplanes(12, 64, seed=3).encode(x) == codes).all()
    assert not (RandomHyperplanes(12, 64, seed=4).encode(x) == codes).all()


# ------------------------------------------------------------------- the binary index


def data(n=2000, q=40, d=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    return [f"doc-{i}" for i in range(n)], x, queries


@pytest.mark.parametrize("bits,k", [(16, 10), (16, 1), (64, 25), (16, 2005)])
def test_exact_search_equals_brute_force_hamming_top_k_ties_by_insertion(bits, k):
    ids, x, queries = data()
    index = build_binary_index(x[:1500], ids[:1500], bits=bits, seed=1)
    index.add(ids[1500:], x[1500:])  # two adds: positions continue
    scores, found = index.search(queries, k)
    h = hamming(index.encode(queries), index.encode(x))  # (Q, N)
    order = np.argsort(h, axis=1, kind="stable")[:, :k]  # ties: first inserted first
    width = min(k, len(ids))
    assert scores.shape == found.shape == (len(queries), width) and scores.dtype == np.float32  # k is clamped
    assert found[:, :width].tolist() == np.array(ids, dtype=object)[order].tolist()
    np.testing.assert_allclose(scores[:, :width], 1.0 - np.take_along_axis(h, order, 1) / bits, atol=1e-6)
    cosine = BinaryIndex(24, bits, seed=1, score="cosine")
    cosine.add(ids, x)
    cos_scores, cos_found = cosine.search(queries, k)
    assert (cos_found == found).all()
    np.testing.assert_allclose(cos_scores[:, :width], np.cos(np.pi * np.take_along_axis(h, order, 1) / bits),
                               atol=1e-6)


def planted(n=3000, q=30, d=32, per_query=5, seed=0):
    """Random vectors plus, for each query, ``per_query`` neighbours at small angles."""
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    near = []
    for i in range(q):
        spread = rng.uniform(0.02, 0.15, (per_query, 1)) * np.linalg.norm(queries[i]) / np.sqrt(d)
        near.append(queries[i] + rng.standard_normal((per_query, d)) * spread)  # angles ~0.02-0.15 rad
    x = np.concatenate([rng.standard_normal((n, d)), *near]).astype(np.float32)
    return [f"doc-{i}" for i in range(len(x))], x, queries


@pytest.mark.parametrize("method,hash_bits,tables,nflip", [("hash", 12, 1, 2), ("multihash", 16, 4, 1),
                                                          ("multihash", 8, 8, 0)])
def test_hash_tables_return_exactly_their_buckets_and_every_code_within_the_radius(method, hash_bits, tables, nflip):
    ids, x, queries = planted()
    bits = 64
    index = build_binary_index(x, ids, bits=bits, method=method, hash_bits=hash_bits, tables=tables, nflip=nflip,
                               seed=2)
    exact = build_binary_index(x, ids, bits=bits, seed=2)
    qc, xc = index.encode(queries), index.encode(x)
    qbits = np.unpackbits(qc, axis=1, bitorder="little")  # (Q, 64)
    xbits = np.unpackbits(xc, axis=1, bitorder="little")  # (N, 64)
    # reference candidate set: some table's key (bits t*b .. (t+1)*b) within nflip of the query's key
    slice_dist = np.stack([(qbits[:, None, t * hash_bits:(t + 1) * hash_bits] !=
                            xbits[None, :, t * hash_bits:(t + 1) * hash_bits]).sum(-1) for t in range(tables)])
    candidates = (slice_dist <= nflip).any(0)  # (Q, N)
    h = hamming(qc, xc)
    scores, found = index.search(queries, k=len(ids))  # deep enough to return every candidate
    for row in range(len(queries)):
        got = [i for i in found[row] if i is not None]
        want = np.flatnonzero(candidates[row])
        assert sorted(got) == sorted(ids[j] for j in want)
        order = want[np.lexsort((want, h[row, want]))]  # by (distance, position)
        assert got == [ids[j] for j in order]
        np.testing.assert_allclose(scores[row, :len(got)], 1 - h[row, order] / bits, atol=1e-6)
        if method == "multihash":  # pigeonhole: every code within tables * (nflip + 1) - 1 is a candidate
            assert candidates[row, h[row] <= tables * (nflip + 1) - 1].all()
    # sub-linear work, and the planted near neighbours are still found
    stats = index.search_stats(queries)
    assert stats["candidates"] < 0.25 * len(ids)
    k = 5
    _, hashed = index.search(queries, k)
    _, true = exact.search(queries, k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(hashed.tolist(), true.tolist())])
    assert recall >= 0.8, recall


def test_nflip_per_call_and_persistent():
    ids, x, queries = planted(n=500)
    index = build_binary_index(x, ids, bits=64, method="hash", hash_bits=16, nflip=0, seed=0)
    few = index.search_stats(queries)["candidates"]
    more = index.search_stats(queries, nflip=2)["candidates"]
    assert more > few and index.search_params == {"nflip": 0}
    assert index.search_stats(queries)["candidates"] == few
    index.set_search_params(nflip=2)
    assert index.search_stats(queries)["candidates"] == more


@pytest.mark.parametrize("method", ["flat", "hash", "multihash"])
def test_save_load_round_trip(tmp_path, method):
    ids, x, queries = planted(n=800)
    options = {} if method == "flat" else dict(hash_bits=16, tables=1 if method == "hash" else 4, nflip=2)
    index = build_binary_index(x, ids, bits=128, method=method, seed=5, **options)
    index.save(tmp_path / "idx")
    back = Index.load(tmp_path / "idx")
    assert isinstance(back, BinaryIndex) and repr(back) == repr(index)
    assert len(back) == len(index) and back.dim == 32 and back.bits == 128
    assert (back.hyperplanes.planes == index.hyperplanes.planes).all()
    for a, b in zip(index.search(queries, 20), back.search(queries, 20)):
        assert (a == b).all()
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["kind"] == "binary" and meta["bits"] == 128
    # saving over an existing folder replaces it
    small = build_binary_index(x[:10], ids[:10], bits=64, seed=5)
    small.save(tmp_path / "idx")
    assert len(Index.load(tmp_path / "idx")) == 10


def test_index_load_finds_the_binary_kind_without_importing_hashing(tmp_path):
    ids, x, _ = data(n=50)
    build_binary_index(x, ids, bits=64).save(tmp_path / "idx")
    code = ("import sys; from reprlab.retrieval.index import Index; "
            "assert 'reprlab.retrieval.hashing' not in sys.modules; "
            f"print(type(Index.load({str(tmp_path / 'idx')!r})).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "BinaryIndex"


def test_bad_input_is_a_reprlab_error():
    with pytest.raises(ConfigError, match="multiple of 8"):
        BinaryIndex(8, bits=12)
    with pytest.raises(ConfigError, match="method"):
        BinaryIndex(8, method="lsh")
    with pytest.raises(ConfigError, match="tables"):
        BinaryIndex(8, bits=32, method="multihash", hash_bits=16, tables=3)
    with pytest.raises(ConfigError, match="nflip"):
        BinaryIndex(8, bits=32).set_search_params(nflip=1)
    index = BinaryIndex(8, bits=32)
    with pytest.raises(ReprlabError, match=r"\(n, 8\)"):
        index.add(["a"], np.zeros((1, 5), np.float32))
    index.add(["a"], np.ones((1, 8), np.float32))
    with pytest.raises(ReprlabError, match="duplicate"):
        index.add(["a"], np.ones((1, 8), np.float32))
    with pytest.raises(ConfigError, match="similarity"):
        HashingConfig(output_dir="x", data="y", similarity="hamming")


# ------------------------------------------------------------------- the training recipe


def _config(tmp_path, model, **loop):
    return HashingConfig(output_dir=str(tmp_path), data=str(demo_data_path()), split="test", model=str(model),
                         num_negatives=1, mine_depth=5, query_max_length=32, passage_max_length=64,
                         train=TrainConfig(output_dir="", batch_size=6, lr=1e-3, warmup_steps=2, log_every=1, **loop))


def test_hashing_loss_decreases_and_binary_retrieval_improves(tmp_path, tiny_model_dir):
    data = load_beir(demo_data_path(), split="test")
    before = evaluate_retriever(binary_retriever(str(tiny_model_dir), data.corpus, bits=512), data)["ndcg_cut_10"]
    result = run_hashing(_config(tmp_path, tiny_model_dir, max_steps=30))
    losses = [json.loads(line)["loss"] for line in open(result.metrics_file)]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    retriever = binary_retriever(result.model_dir, data.corpus, bits=512)
    after = evaluate_retriever(retriever, data)["ndcg_cut_10"]
    assert after > before + 0.2, (before, after)
    # the retriever folder (model name + binary index) loads back and searches the same
    retriever.save(tmp_path / "index")
    from reprlab.retrieval.dense import DenseRetriever

    back = DenseRetriever.load(tmp_path / "index")
    assert isinstance(back.index, BinaryIndex)
    q = [data.queries[i] for i in list(data.queries)[:3]]
    assert (back.search(q, 5)[1] == retriever.search(q, 5)[1]).all()


def test_hashing_resume_is_exact(tmp_path, tiny_model_dir):
    full = run_hashing(_config(tmp_path / "full", tiny_model_dir, max_steps=6, checkpoint_every=3))
    run_hashing(_config(tmp_path / "cut", tiny_model_dir, max_steps=6, checkpoint_every=3), stop_after=4)
    cut = run_hashing(_config(tmp_path / "cut", tiny_model_dir, max_steps=6, checkpoint_every=3, resume=True))
    from safetensors.torch import load_file

    a = load_file(f"{full.model_dir}/model.safetensors")
    b = load_file(f"{cut.model_dir}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------- defaults, gradients, DDP (mutation testing)


def _plain_angular(a, b):
    cos = torch.nn.functional.cosine_similarity(a[:, None, :], b[None, :, :], dim=-1)
    return 1 - torch.arccos(cos) / math.pi


def test_angular_similarity_gradient_and_the_clamp_below_minus_one():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 4, generator=g, requires_grad=True), torch.randn(5, 4, generator=g)
    a2 = a.detach().clone().requires_grad_(True)
    w = torch.randn(3, 5, generator=g)
    (angular_similarity(a, b) * w).sum().backward()
    (_plain_angular(a2, b) * w).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-4, atol=1e-5)
    below = safe_arccos(torch.tensor([-1.0000001, -1.5]))
    torch.testing.assert_close(below, torch.tensor([math.pi, math.pi]))


def test_angular_loss_defaults_and_bad_similarity():
    g = torch.Generator().manual_seed(2)
    q, pos = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    want = torch.nn.functional.cross_entropy(50.0 * _plain_angular(q, pos), torch.arange(3))  # angular, scale 50
    torch.testing.assert_close(angular_contrastive_loss(q, pos), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="^unknown similarity 'cosine'; choose one of angular, log-angular$"):
        angular_contrastive_loss(q, pos, similarity="cosine")
    with pytest.raises(ConfigError) as err:
        HashingConfig(output_dir="x", data="y", similarity="hamming")
    assert err.value.field == "similarity"


class _FixedModel:
    def __init__(self, q, p):
        self.q, self.p = q, p

    def __call__(self, queries, passages):
        assert (queries, passages) == ("Q", "P")
        return self.q, self.p


def test_hashing_loss_is_the_angular_loss_of_the_models_vectors_with_the_false_negative_mask():
    from reprlab.retrieval.hashing import hashing_loss

    g = torch.Generator().manual_seed(3)
    q, p = torch.randn(2, 6, generator=g), torch.randn(4, 6, generator=g)  # 2 positives, then 2 negatives
    batch = {"queries": "Q", "passages": "P", "candidate_ids": torch.tensor([1, 2, 3, 2]),
             "relevant": torch.tensor([[1, 2], [2, -1]])}
    for args, kwargs in (((7.0,), {"similarity": "log-angular"}), ((7.0,), {})):
        loss, metrics = hashing_loss(*args, **kwargs)(_FixedModel(q, p), batch)
        want = angular_contrastive_loss(q, p[:2], p[2:], scale=7.0, similarity=kwargs.get("similarity", "angular"),
                                        candidate_ids=batch["candidate_ids"], query_positive_ids=batch["relevant"])
        torch.testing.assert_close(loss, want)
        assert metrics == {"angular_positive": pytest.approx(float(_plain_angular(q, p[:2]).diagonal().mean()))}
    unmasked = angular_contrastive_loss(q, p[:2], p[2:], scale=7.0)
    assert abs(float(unmasked) - float(hashing_loss(7.0)(_FixedModel(q, p), batch)[0])) > 1e-4


def _angular_rank(rank, world, port, out):
    import os

    from safetensors.torch import save_file

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(4)
    q, pos = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mine = slice(2 * rank, 2 * rank + 2)
    gathered = angular_contrastive_loss(q[mine], pos[mine], scale=5.0)  # gathers by default
    local = angular_contrastive_loss(q[mine], pos[mine], scale=5.0, gather=False)
    parts = [torch.zeros(2) for _ in range(world)]
    torch.distributed.all_gather(parts, torch.stack([gathered, local]))
    if rank == 0:
        save_file({"losses": torch.stack(parts)}, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os._exit(0)  # as in test_losses: skip an interpreter teardown that gloo sometimes aborts


def test_under_ddp_the_candidates_are_gathered_unless_told_not_to(tmp_path):
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_angular_rank, args=(2, port, str(tmp_path / "l.safetensors")), nprocs=2, join=True)
    losses = load_file(tmp_path / "l.safetensors")["losses"]  # (rank, [gathered, local])
    g = torch.Generator().manual_seed(4)
    q, pos = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    torch.testing.assert_close(losses[:, 0].mean(), angular_contrastive_loss(q, pos, scale=5.0))
    for r in range(2):
        torch.testing.assert_close(losses[r, 1], angular_contrastive_loss(q[2 * r: 2 * r + 2], pos[2 * r: 2 * r + 2],
                                                                          scale=5.0))
