"""Every bench script's ``--quick`` run, end to end, on the real data of $REPRLAB_SHARED_DATA.

Each case runs ``python bench/<script>.py --quick --threads 1 --output TMP/<script>.json`` (plus
``--work-dir TMP/work`` where the script keeps models) in a subprocess and checks the JSON it wrote:
the rows it must hold and a property of the method that a broken run would miss. A case is skipped
when a data folder it reads is absent or an optional package it needs is not installed. Cases whose
quick run takes more than ~20 s on 2 cores are marked ``slow`` (``pytest -m slow tests/test_bench_quick.py``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    script: str
    check: Callable[[dict], None]
    data: tuple[str, ...] = ("scifact",)  # folders under the shared data root
    packages: tuple[str, ...] = ()  # optional packages the run imports
    args: tuple[str, ...] = ()
    work_dir: bool = True  # the script keeps models in --work-dir
    slow: bool = True
    name: str = ""

    @property
    def id(self) -> str:
        return self.name or self.script


def unit(x) -> bool:
    return 0.0 <= x <= 1.0


# ----------------------------------------------------------------------------- what each JSON must hold


def check_approx(r):
    assert [x["model"] for x in r["rows"]] == ["fine-tuned (unpruned)", "AxFormer, paper criterion",
                                               "AxFormer, loss budget +5%"]
    base, *pruned = r["rows"]
    assert base["speedup"] == 1.0 and all(unit(x["ndcg@10"]) for x in r["rows"])
    assert all(x["candidates_tried"] > 0 and x["params_m"] <= base["params_m"] for x in pruned)
    assert len(base["encode_timing"]["passes"]) == 3
    assert all(x["encode_s"] == round(x["encode_timing"]["median"], 2) for x in r["rows"])  # medians, not the fastest


def check_architectures(r):
    rows = {x["variant"]: x for x in r["results"]}
    assert list(rows) == ["softmax", "collaborative D~=32"]
    assert all(math.isfinite(x["held_out_mlm_loss"]) and x["curve"] for x in rows.values())
    # collaborative heads share the key/query projections: fewer attention parameters per layer
    assert rows["collaborative D~=32"]["attention_params_per_layer"] < rows["softmax"]["attention_params_per_layer"]
    assert list(rows["softmax"]["tokens_per_s"]) == ["128"]


def check_architectures_speed(r):
    rows = {x["variant"]: x for x in r["results"]}
    assert list(rows) == ["softmax", "collaborative D~=32"]
    assert all("held_out_mlm_loss" not in x and "curve" not in x for x in rows.values())  # nothing was trained
    for x in rows.values():
        step = x["step_seconds"]["128"]
        assert len(step["passes"]) == 3 and step["min"] <= step["median"] <= step["max"]
        assert x["tokens_per_s_median"]["128"] == pytest.approx(x["tokens_per_batch"]["128"] / step["median"], rel=1e-3)
    assert rows["collaborative D~=32"]["attention_params_per_layer"] < rows["softmax"]["attention_params_per_layer"]


def check_blockskim(r):
    rows = r["rows"]
    assert rows[0]["reader"] == "plain" and rows[0]["speedup"] == 1.0
    assert {x["reader"] for x in rows[1:]} == {
        "Block Skim (diagonal)", "Block Skim (diagonal+question)", "Block Skim (diagonal, reader frozen)",
        "Block Skim (diagonal+question, reader frozen)"}
    assert {x["threshold"] for x in rows[1:]} == {0.0, 0.5} and all(0 < x["slots"] <= 1 for x in rows)
    assert r["eval_questions"] == 8 and len(r["predictors"]) == 4 * 3
    tuning = r["tuning"]  # thresholds chosen on the dev side, which no reader trained on
    assert tuning["questions"] == 8 and len(tuning["chosen"]) == 4 * 3 and set(tuning["chosen"].values()) <= {0.0, 0.5}
    assert all(x["threshold"] == tuning["chosen"][f"{x['reader']} @ {','.join(map(str, x['skim_layers']))}"]
               for x in r["chosen_rows"])
    assert all(unit(p["auc"]) for p in r["predictors"])


def check_clusterformer(r):
    cells = {(x["kind"], x["tokens"]): x for x in r["timing"]}
    assert set(cells) == {(k, n) for k in ("full (SDPA)", "full (math)", "sliding-window", "cluster-former")
                          for n in (256, 512)}
    assert all(x["seconds"] is not None and x["median_s"] >= x["seconds"] for x in cells.values())
    assert all(len(x["passes"]) == 3 and min(x["passes"]) == x["seconds"] for x in cells.values())
    readers = [x["reader"] for x in r["qa"]["rows"]]
    assert readers == ["windows (stage 1 only)", "windows", "softmax", "cluster-former"]
    assert all(0 <= x["f1"] <= 100 for x in r["qa"]["rows"])


def check_deep_retrieval(r):
    ml = r["movielens"]
    methods = [x["method"] for x in ml["rows"]]
    assert methods[:3] == ["popularity", "two-tower brute force", "two-tower FAISS IVF"]
    assert {"implicit ALS", "implicit BPR", "deep retrieval"} <= set(methods) or "implicit ALS/BPR" in methods
    assert all(unit(x["recall@20"]) and x["recall@10"] <= x["recall@20"] <= x["recall@50"] for x in ml["rows"]
               if "recall@20" in x)
    dr = [x for x in ml["rows"] if x["method"] == "deep retrieval"]
    assert {(x["B"], x["reranker"]) for x in dr} == {(10, True), (10, False), (20, True), (20, False)}
    # the reranker reorders the beam's items, it does not change which ones are scored
    for b in (10, 20):
        on, off = [[x for x in dr if x["B"] == b and x["reranker"] is flag and x["alpha"] == 0] for flag in (True, False)]
        assert on[0]["items_scored"] == off[0]["items_scored"]
    brute = ml["rows"][1]
    assert brute["items_scored"] == ml["items"] == 1682 and brute["spread"] >= 0
    assert ml["headline"]["seeds"] == 1 and ml["headline"]["ratio"] > 0
    points = r["scaling"]["points"]
    assert [p["items"] for p in points] == [2000, 8000]
    assert all(p["brute_force"]["items_scored"] == p["items"] and p["dr"]["items_scored"] < p["items"] for p in points)
    assert all(unit(p["oracle_recall@20"]) and p["dr"]["recall@20_all"] <= 1 for p in points)
    grid = r["scaling"]["grid_val"]
    assert list(grid) == ["alpha=0.01 explore=0.0", "alpha=0.01 explore=0.01"]
    # the setting: the best validation recall@20 among those scoring <= 20% of the items (all if none does)
    eligible = {k: v for k, v in grid.items() if v["items_scored"] <= 0.2 * 2000} or grid
    best = max(eligible, key=lambda k: eligible[k]["recall@20"])
    assert all(f"alpha={p['dr_setting']['alpha']} explore={p['dr_setting']['em_explore']}" == best for p in points)
    assert all(p["train_examples"] == 20_000 and p["dr_setting"]["B"] == 10 and p["dr_setting"]["em_every"] > 0
               for p in points)
    # the same model served with a wider beam scores at least as many items
    assert all(p["dr_beams"]["20"]["items_scored"] >= p["dr"]["items_scored"] for p in points)


def check_distill(r):
    rows = {x["model"]: x for x in r["rows"]}
    assert list(rows) == ["teacher (MiniLM-L6)", "none (layers taken)", "kd", "ckd", "seed"]
    students = [x for name, x in rows.items() if not name.startswith("teacher")]
    assert all(x["layers"] == 3 and x["size_ratio"] > 1 for x in students)
    assert all(unit(x[f"ndcg@10_{c}"]) for x in rows.values() for c in ("scifact", "cranfield", "cisi"))
    assert r["goal"]["best"] in ("kd", "ckd", "seed")


def check_distill_dev(r):
    assert r["name"] == "ckd" and r["dev_queries"] == len(r["dev_query_ids"]) == 20 and unit(r["ndcg@10_dev"])
    assert r["dev_fraction"] == 0.2 and r["dev_text_excluded"] is True and r["dev_texts_in_training"] == 0
    assert r["ckd"]["window"] == 21 and r["args"]["steps"] == 3


def check_distill_gpu(r):
    assert [x["model"] for x in r["scores"]] == ["teacher", "kd seed 0", "ckd seed 0"]
    assert all(x["steps"] == 2 and "error" not in x for x in r["trained"])
    assert all(unit(x[k]) for x in r["scores"] for k in ("scifact_dev", "scifact", "cranfield", "cisi"))


def check_encode(r):
    res = {x["setting"]: x for x in r["results"]}
    onnx = ["onnx-fp32", "onnx-int8"] if importlib.util.find_spec("onnxruntime") else []  # the onnx extra's rows
    assert list(res) == ["sentence-transformers", "reprlab-fp32", "reprlab-bf16", "reprlab-int8", *onnx]
    assert all(len(x["passes"]) == 3 and x["seconds"] > 0 for x in res.values())
    # our fp32 encoder (torch or ONNX) reproduces sentence-transformers; bf16 and int8 move the vectors a little
    assert all(res[s]["max_abs_diff_vs_base"] < 1e-4 for s in ("reprlab-fp32", *onnx[:1]))
    assert all(1e-4 < res[s]["max_abs_diff_vs_base"] < 0.5 for s in ("reprlab-int8", *onnx[1:]))


def check_encode_gpu(r):
    res = {x["setting"]: x for x in r["results"]}
    assert list(res) == ["sentence-transformers", "reprlab-padded", "reprlab-packed"]
    assert r["precision"] == "fp32" and r["packed_vs_padded_max_abs_diff"] < 1e-4  # unpadded = padded
    assert abs(res["reprlab-packed"]["ndcg_cut_10"] - res["reprlab-padded"]["ndcg_cut_10"]) < 1e-6


def check_fe_variance(r):
    res = r["results"]
    assert list(res) == ["random (K independent masks)", "fully-explored, random partition",
                         "fully-explored, contiguous segments"]
    assert r["copies"] == 7 and all(x["grad_variance_trace"] > 0 for x in res.values())
    # the paper's claim: partitioned masks give a lower-variance gradient than independent ones
    assert res["fully-explored, random partition"]["variance_ratio_random_over_this"] > 1


def check_hashing(r):
    rows = r["rows"]
    assert {x["model"] for x in rows} == {"MiniLM", "MiniLM + angular loss"} and len(rows) == 2 * (1 + 3 * 2)
    assert r["vectors"]["from"] == "trained and encoded in this run"
    for x in rows:
        assert unit(x["ndcg@10"]) and unit(x["recall@100"]) and x["passes"] >= 3  # timings: median of >= 3 passes
        assert x["ms_per_query_min"] <= x["ms_per_query"] <= x["ms_per_query_max"] and x["ms_per_query_spread"] >= 0
        if x["index"] == "binary, exact Hamming":
            assert x["candidates"] == r["docs"] and x["code_bytes"] == x["bits"] // 8
        if x["index"] == "binary, hash tables":
            assert x["candidates"] <= r["docs"]
    ndcg = {(x["model"], x["bits"]): x["ndcg@10"] for x in rows if x["index"] != "binary, hash tables"}
    assert [(p["a"], p["b"]) for p in r["paired"]] == [("MiniLM + angular loss", "MiniLM")] * 4  # float + 3 lengths
    for p in r["paired"]:  # the mean of the per-query differences is the difference of the means
        assert p["difference"] == pytest.approx(ndcg[(p["a"], p["bits"])] - ndcg[(p["b"], p["bits"])], abs=2e-4)
        assert p["ci95"][0] <= p["difference"] <= p["ci95"][1] and p["won"] + p["lost"] <= r["test_queries"]


def check_multihop(r):
    assert len(r["rows"]) == 6 and r["rows"][0]["retriever"].startswith("BM25")
    assert all(unit(v) for x in r["rows"] for v in x["all"].values() if isinstance(v, float))
    assert set(r["sanity_all_questions"]) == {"bm25", "minilm"}


def check_pretraining(r):
    res = r["results"]
    assert list(res) == ["zero-shot", "none", "random", "wwm", "span", "pmi", "fully-explored", "cmlm"]
    assert all(res[p]["steps"] == 3 for p in ("random", "wwm", "span", "pmi", "fully-explored", "cmlm"))
    # the same masked rows per step for every scheme: fully-explored packs 7 copies of 2 texts
    assert res["fully-explored"]["rows_per_step"] == 14 and res["fully-explored"]["texts_per_step"] == 2
    assert all(unit(x["ndcg@10"]) for x in res.values()) and res["pmi"]["pmi_vocab"]["size"] > 0


def check_scifact_blocks(r):
    zero = {x["model"]: x for x in r["zero_shot"]}
    assert list(zero) == ["MiniLM (softmax, D~=384)", "collaborative D~=96"]
    assert zero["collaborative D~=96"]["attention_params"] < zero["MiniLM (softmax, D~=384)"]["attention_params"]
    assert [x["model"] for x in r["tuned"]] == ["MiniLM (softmax, D~=384)", "MiniLM + HIRE pooling",
                                                "collaborative D~=96"]
    assert all(x["steps"] == 2 and unit(x["ndcg_cut_10"]) for x in r["tuned"])
    assert r["speed"][0]["speed_vs_minilm"] == 1.0 and len(r["speed"]) == 2
    # the rate is the median pass's (never above the fastest pass's), and the ratio is of the medians
    assert all(x["passes"] == len(x["pass_docs_per_s"]) >= 3 and 0 < x["docs_per_s"] <= x["fastest_docs_per_s"]
               and x["docs_per_s"] == pytest.approx(statistics.median(x["pass_docs_per_s"]), abs=0.06)
               for x in r["speed"])
    base, other = r["speed"]
    assert other["speed_vs_minilm"] == pytest.approx(other["docs_per_s"] / base["docs_per_s"], rel=0.05)


def check_search(r):
    dense = {x["index"]: x for x in r["dense"]}
    assert list(dense) == ["Flat", "HNSW32", "Flat x4 shards"]
    assert dense["Flat x4 shards"]["recall_vs_flat"] == 1.0  # sharded search equals flat search
    assert all(x["ours_ms"] >= x["ours_fastest_ms"] > 0 and x["ours_spread"] >= 0 for x in dense.values())
    assert all(abs(x["ratio"] - x["ours_ms"] / x["raw_faiss_ms"]) < 0.01 for x in dense.values())  # of the medians
    ours, peer = r["bm25"]
    assert ours["system"].startswith("reprlab") and peer["system"].startswith("rank_bm25")
    assert abs(ours["ndcg@10"] - peer["ndcg@10"]) < 0.05  # same tokens and k1/b: close scores
    assert ours["query_s"] >= ours["query_fastest_s"] > 0 and ours["repeats"] >= 3
    assert peer["query_ratio_vs_ours"] > 2  # rank_bm25 scores every document per query: always far slower


def check_seed_images(r):
    rows = {x["encoder"]: x for x in r["rows"]}
    assert len(rows) == 4 and r["train_images"] == 2048 and r["test_images"] == 1000
    teacher = rows["teacher (supervised, 32-64-128)"]
    assert teacher["macs"] > 10 * rows["student, SEED from the teacher"]["macs"]
    assert teacher["linear_probe_acc"] > 0.5 and all(0.1 <= x["linear_probe_acc"] <= 1 for x in rows.values())


def check_serve(r):
    assert [x["concurrency"] for x in r["service"]] == [1, 8, 32]
    assert all(x["failed"] == 0 and x["rps"] > 0 and x["p99_ms"] >= x["p50_ms"] > 0 for x in r["service"])
    assert r["in_process"]["qps"] > 0 and len(r["in_process"]["timing"]["passes"]) == 3


def check_train_retrieval(r):
    rows = {x["row"]: x for x in r["results"]}
    assert list(rows) == ["minilm", "bm25", "dpr", "ance"]
    assert rows["dpr"]["train_seconds"] > 0 and len(rows["ance"]["refreshes"]) >= 1
    assert all(unit(x["scores"]["scifact"]["ndcg_cut_10"]) for x in rows.values())


def check_train_retrieval_peer(r):
    rows = {x["row"]: x for x in r["results"]}
    assert list(rows) == ["st-mnrl", "st-mnrl-b64"]
    assert all(x["train_seconds"] > 0 and unit(x["scores"]["scifact"]["ndcg_cut_10"]) for x in rows.values())


# CPU seconds of each quick run on 2 cores (wall time is about the same on a quiet machine): approx 39,
# architectures 20, blockskim 54, clusterformer 60, distill 67, distill_dev 10, distill_gpu 54, encode 42,
# fe_variance 21, hashing 29, multihop 55, pretraining 94, scifact_blocks 51, search 4, seed_images 11,
# train_retrieval 77. The not-slow ones add about a minute to CI.
QA = ("squad_v1.1_dev_xquad_en", "hotpotqa_dev500_ircot")
BEIR3 = ("scifact", "cranfield", "cisi")
def check_jaket(r):
    assert {"text only (LM vectors, no graph)", "KM from JAKET (memory + KM pre-trained)"} <= set(r["link"])
    for row in r["link"].values():
        if isinstance(row, dict) and "mrr" in row:
            assert unit(row["mrr"])
    assert "JAKET (pre-trained KM)" in r["category"] and r["relation"]


def check_mutation(r):
    (kd,) = r["modules"]
    assert kd["module"] == "kd" and kd["mutants"] > 50 and unit(kd["score"])
    assert kd["counts"].get("killed", 0) > kd["counts"].get("survived", 0)


def check_reader_distill(r):
    assert r["datasets"] and r["distillation"] and r["headline"]
    for name, row in r["headline"].items():
        assert isinstance(row, dict) and row, name


def check_reader_distill_extractive(r):
    """The extractive teacher alone: no FiD reader is built (no FiD row in the teacher table), the extractive
    reader gives the EM/F1 rows, and the headline has the extractive-distilled retriever."""
    assert set(r["headline"]) == {"xquad-extractive"} and r["headline"]["xquad-extractive"]["distilled"]
    rows = r["teachers_on_dev"]["xquad"]["rows"]
    assert {"extractive span", "extractive question-attention"} <= set(rows)
    assert not any(k.startswith("fid") for k in rows) and "fid_reader" not in r
    d = r["datasets"]["xquad"]
    assert d["read_with"] == "extractive" and set(d["reader"]) == set(d["recall"])
    assert all(0 <= m["f1"] <= 100 for m in d["reader"].values())


def check_cka(r):
    assert r["models"] and r["peer"]["max_abs_diff"] < 1e-6  # our minibatch CKA = ckatorch's on the same batches
    assert unit(r["findings"]["pc1_share_inside_blocks"])
    assert not r["errors"], r["errors"]
    minilm, dpr, ance = r["text"]  # MiniLM and its DPR and ANCE fine-tunes (2 steps each), layer by layer
    assert minilm["model"] == "minilm" and dpr["model"].endswith("dpr-e1/model") and ance["model"].endswith("ance-e1/model")
    for tuned in (dpr, ance):
        assert tuned["training"]["steps"] == 2
        assert len(tuned["diagonal_with_minilm"]) == len(minilm["layers"])
        assert all(unit(c) for c in tuned["diagonal_with_minilm"])
        assert min(tuned["diagonal_with_minilm"]) < 1 - 1e-6  # the fine-tune changed the weights


def test_cka_train_only_then_reuse(tmp_path, shared_data):
    """--train-only trains the grid and stops; a later run reuses those models instead of training again."""
    root = shared_data("fashion_mnist_train").parent
    env = {**os.environ, "REPRLAB_SHARED_DATA": str(root)}
    base = [sys.executable, "bench/cka.py", "--quick", "--threads", "1", "--no-text", "--work-dir", str(tmp_path / "w")]
    first = tmp_path / "first.json"
    proc = subprocess.run([*base, "--train-only", "--output", str(first)], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = sorted((tmp_path / "w-quick" / "models").glob("*/results.json"))
    assert len(done) == 4 and not first.exists()  # the 4 quick models trained, then it stopped: no analysis
    trained = {p.parent.name: json.loads(p.read_text())["train_seconds"] for p in done}
    out = tmp_path / "cka.json"
    proc = subprocess.run([*base, "--no-peer", "--output", str(out)], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert {m["name"]: m["train_seconds"] for m in record["models"]} == trained  # reused, not retrained
    assert all("cka" in m for m in record["models"]) and not record["cut_for_time"]


def check_curricula(r):
    assert r["runs"] and r["selected"] and r["findings"]
    assert r["dpr"]["rows"]


def check_scale(r):
    assert r["encode"]["rows"] and r["index"]["rows"]
def check_natural_tasks(r):
    assert set(r["lms"]) == {"minilm-head", "minilm-mlm", "scratch-ce", "scratch-quad"}
    assert all(lm["held_out"]["cross_entropy"] > 0 for lm in r["lms"].values())
    for task in ("sst2", "agnews"):
        rec = r["probes"][task]
        assert set(rec["rows"]) == {f"{lm}/{p}" for lm in r["lms"] for p in ("none", "prompt")}
        assert unit(rec["minilm_sentence"]["mean"]) and unit(rec["bow"]["mean"])
        for row in rec["rows"].values():  # every feature probed (in the --jobs pool), all seeds
            assert {"h", "f", "p_subset", "phi_p", "phi_p_subset", "zero_shot"} <= set(row)
            assert all(len(row[f]["seeds"]) == len(rec["bow"]["seeds"]) and unit(row[f]["mean"])
                       for f in row if f != "zero_shot")
    syn = r["synthetic"]
    assert {x["loss"] for x in syn["records"]} == {"oracle", "ce", "quad"} and "ce/f" in syn["fits"]
    # the probe on the true p*: near perfect (the tiny world's 400-example probe errs on 3.75 % of seed 0's
    # test contexts; the full run's on at most 0.05 %), exactly perfect is the library test's job
    assert all(x["errors"]["p_star"] < 0.1 for x in syn["records"] if x["loss"] == "oracle")


def check_deep_retrieval_diagnose(r):
    v = r["variants"]["baseline"]
    assert r["setting"]["D"] >= 2 and v["total_steps"] > 0 and v["final_paths"] and "m_steps" in v
    capped, free = v["beams"]["B20/M100"], v["beams"]["20"]  # the same beam under an item budget: fewer items
    assert capped["items_scored"] <= free["items_scored"] and capped["coverage"] <= free["coverage"]


def check_deep_retrieval_serving(r):
    assert [p["items"] for p in r["points"]] == [2000, 20000]
    assert all(p["dr"]["ms_per_1000"] > 0 and p["brute_force"]["items_scored"] == p["items"] for p in r["points"])


CASES = [
    Case("approx", check_approx),
    Case("jaket", check_jaket, data=("wn18rr_text", "umls_text"), packages=("torch_geometric", "pykeen")),
    Case("mutation", check_mutation, packages=("mutmut",), work_dir=False, args=()),
    Case("architectures", check_architectures, data=("gutenberg_books10", "wikitext2_raw_valid_test"),
         work_dir=False),
    Case("architectures", check_architectures_speed, data=("scifact",), work_dir=False, slow=False,
         args=("--speed-only",), name="architectures-speed"),
    Case("blockskim", check_blockskim, data=QA),
    Case("clusterformer", check_clusterformer, data=QA),
    Case("cka", check_cka, data=("fashion_mnist_train", "fashion_mnist_test", "scifact"), packages=("ckatorch",),
         args=("--text-ance-epochs", "1")),
    Case("curricula", check_curricula, data=("fashion_mnist_train", "fashion_mnist_test", "scifact")),
    Case("deep_retrieval", check_deep_retrieval, data=("movielens_100k",)),
    Case("deep_retrieval_diagnose", check_deep_retrieval_diagnose, data=("movielens_100k",),
         args=("--budgets", "100", "--budget-beam", "20")),
    Case("deep_retrieval_serving", check_deep_retrieval_serving, data=("movielens_100k",), work_dir=False),
    Case("distill", check_distill, data=BEIR3),
    Case("distill_dev", check_distill_dev, slow=False),
    Case("distill_gpu", check_distill_gpu, data=BEIR3),
    Case("encode", check_encode, packages=("sentence_transformers",), work_dir=False),
    Case("encode_gpu", check_encode_gpu, packages=("sentence_transformers",), work_dir=False),
    Case("fe_variance", check_fe_variance, work_dir=False, slow=False),
    Case("hashing", check_hashing),
    Case("multihop", check_multihop, data=("hotpotqa_dev500_ircot",)),
    Case("reader_distill", check_reader_distill, data=QA),
    Case("reader_distill", check_reader_distill_extractive, data=QA, name="reader_distill-extractive",
         args=("--datasets", "xquad", "--stages", "extractive", "teachers", "distill-extractive", "evaluate",
               "--read-with", "extractive")),
    Case("scale", check_scale, packages=("ray", "pyarrow")),
    Case("natural_tasks", check_natural_tasks, data=("sst2", "agnews", "gutenberg_books10", "wikitext2_raw_valid_test"),
         packages=("sklearn",), args=("--jobs", "2")),
    Case("pretraining", check_pretraining),
    Case("scifact_blocks", check_scifact_blocks, work_dir=False),
    Case("search", check_search, packages=("rank_bm25",), work_dir=False, slow=False),
    Case("serve", check_serve, packages=("fastapi", "uvicorn")),
    Case("seed_images", check_seed_images, data=("fashion_mnist_train", "fashion_mnist_test"), slow=False),
    Case("train_retrieval", check_train_retrieval, args=("--rows", "minilm", "bm25", "dpr", "ance")),
    Case("train_retrieval", check_train_retrieval_peer, name="train_retrieval-peer",
         packages=("sentence_transformers", "datasets", "accelerate"), args=("--rows", "st-mnrl", "st-mnrl-b64")),
]


def test_every_bench_script_has_a_case():
    scripts = {p.stem for p in (REPO / "bench").glob("*.py") if "__main__" in p.read_text()}  # not helper modules
    assert scripts == {c.script for c in CASES}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CASES])
def test_quick_run(case: Case, tmp_path, shared_data):
    root = [shared_data(folder) for folder in case.data][0].parent  # skips when a folder is absent
    for package in case.packages:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"bench/{case.script}.py --quick needs the optional package {package!r}")
    out = tmp_path / f"{case.script}-quick.json"
    cmd = [sys.executable, f"bench/{case.script}.py", "--quick", "--threads", "1", "--output", str(out),
           *(["--work-dir", str(tmp_path / "work")] if case.work_dir else []), *case.args]
    env = {**os.environ, "REPRLAB_SHARED_DATA": str(root)}
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=1200)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    print(f"bench/{case.script}.py --quick: {time.perf_counter() - start:.0f} s wall, "
          f"{after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime:.0f} s CPU")
    record = json.loads(out.read_text())
    assert record["command"].startswith(f"python bench/{case.script}.py --quick")
    assert record["machine"] and record["date"]
    case.check(record)


def test_distill_dev_trains_in_one_process_and_scores_in_another(tmp_path, shared_data):
    """--train-only writes trained.json beside the model; --model reads it back (seconds, CKD settings)."""
    root = shared_data("scifact").parent
    env = {**os.environ, "REPRLAB_SHARED_DATA": str(root)}
    base = [sys.executable, "bench/distill_dev.py", "--quick", "--threads", "1", "--name", "t", "--method", "ckd",
            "--work-dir", str(tmp_path / "work")]
    proc = subprocess.run([*base, "--train-only"], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = json.loads(next((tmp_path).glob("work*/t/trained.json")).read_text())
    assert trained["train_s"] > 0 and trained["ckd"]["window"] == 21
    out = tmp_path / "scored.json"
    proc = subprocess.run([*base, "--model", trained["model"], "--output", str(out)], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["train_s"] == trained["train_s"] and record["ckd"] == trained["ckd"]
    assert trained["dev_fraction"] == 0.2 and record["dev_text_excluded"] is True
    assert 0.0 <= record["ndcg@10_dev"] <= 1.0
