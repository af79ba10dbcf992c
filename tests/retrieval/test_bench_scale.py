"""bench/scale.py's result file: a run of one part keeps the other part of an earlier run."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_one_part_runs_keep_the_other_part(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import scale
    finally:
        sys.path.remove(str(REPO / "bench"))
    corpus = type("Data", (), {"corpus": {}})()
    monkeypatch.setattr(scale, "load", lambda args: (corpus, corpus))
    monkeypatch.setattr(scale, "part_encode", lambda args, corpus: {"rows": [], "docs": 1, "shard_size": 1,
                                                                    "which": "encode"})
    monkeypatch.setattr(scale, "part_index", lambda args, train, test: {"rows": [], "n": 1, "which": "index"})
    monkeypatch.setattr(scale, "plot", lambda rows, path, n: None)
    monkeypatch.setattr(scale, "markdown", lambda record: "")
    out = tmp_path / "scale.json"
    common = ["--data", str(tmp_path), "--output", str(out), "--work-dir", str(tmp_path / "w")]
    scale.main(["--part", "encode", *common])
    scale.main(["--part", "index", *common])
    record = json.loads(out.read_text())
    assert record["encode"]["which"] == "encode" and record["index"]["which"] == "index"
    scale.main(["--part", "encode", *common])  # and the other way round
    record = json.loads(out.read_text())
    assert record["encode"]["which"] == "encode" and record["index"]["which"] == "index"


def _scale_index():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import scale_index
    finally:
        sys.path.remove(str(REPO / "bench"))
    return scale_index


def test_the_dev_rule_needs_recall_and_dev_ndcg_and_never_reads_the_test_side():
    si = _scale_index()

    def row(setting, family, recall, ndcg, qps, b=100.0, test=0.0):
        return {"setting": setting, "family": family, "recall10_dev": recall, "ndcg10_dev": ndcg, "qps": qps,
                "bytes_per_vector": b, "recall10_test": test, "ndcg10_test": test}

    rows = [row("flat", "Flat fp32", 1.0, 0.640, 20, b=1536),
            row("fast, loses nDCG on dev", "PQ + rerank", 0.97, 0.634, 200, test=1.0),
            row("slower, within 0.005", "PQ + rerank", 0.98, 0.639, 100),
            row("low recall", "PQ + rerank", 0.90, 0.640, 500, test=1.0),
            row("only recall", "bits", 0.96, 0.600, 50)]
    chosen = si.choose(rows)
    assert chosen["PQ + rerank"] == "slower, within 0.005"
    assert "bits" not in chosen and chosen["Flat fp32"] == "flat"


def test_miss_causes_split_the_misses_between_the_coarse_quantiser_and_the_codes():
    import numpy as np

    si = _scale_index()
    lists = np.array([0, 0, 1, 1, 2, 2])  # the IVF list of each of 6 vectors
    probed = np.array([[0, 1]])  # the query probed lists 0 and 1
    cand = np.array([[0, 2]])  # the PQ's top-R candidates
    got = si.miss_causes([[3, 4, 5]], lists, probed, cand)  # 3: probed, below R; 4 and 5: list 2, not probed
    assert got == {"missed": 3, "not_probed": round(2 / 3, 3), "probed_but_below_R": round(1 / 3, 3)}
