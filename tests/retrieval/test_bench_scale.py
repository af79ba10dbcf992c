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
    seen = []
    monkeypatch.setattr(scale, "part_index", lambda args, train, test, earlier=None: (
        seen.append(earlier), {"rows": [], "n": 1, "which": "index", "run": len(seen)})[1])
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
    assert seen == [None]
    scale.main(["--part", "index", "--merge", *common])  # --merge hands the earlier index part over
    assert seen[1]["run"] == 1 and json.loads(out.read_text())["index"]["run"] == 2


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


def _scale():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import scale
    finally:
        sys.path.remove(str(REPO / "bench"))
    return scale


def _row(setting, family, qps=10.0, run=None, **params):
    row = {"setting": setting, "family": family, "qps": qps, **params}
    return row if run is None else {**row, "run": run}


def test_merge_keeps_the_earlier_rows_of_settings_not_measured_again_in_table_order():
    si = _scale_index()
    old = {"machine": "m", "date": "d0", "command": "python bench/scale.py --old",
           "rows": [_row("Flat fp32", "Flat fp32", qps=20.0), _row("IVF1024,PQ48 nprobe 256", "IVF1024,PQ48", nprobe=256),
                    _row("IVF1024,PQ96 nprobe 256", "IVF1024,PQ96", nprobe=256),
                    _row("sign bits 384 + rerank 1000", "sign bits 384 + rerank", rerank=1000, bits=384)]}
    new = [_row("Flat fp32", "Flat fp32", qps=22.0),
           _row("sign bits 384 + rerank 5000", "sign bits 384 + rerank", rerank=5000, bits=384),
           _row("IVF4096,PQ48 nprobe 256", "IVF4096,PQ48", nprobe=256),
           _row("IVF1024,PQ48 nprobe 512", "IVF1024,PQ48", nprobe=512),
           _row("HNSW32 efSearch 64", "HNSW32", efSearch=64)]
    rows, runs = si.merge(old, new, {"command": "python bench/scale.py --merge", "flat_fp32_qps": 22.0})
    assert [r["setting"] for r in rows] == [
        "Flat fp32", "HNSW32 efSearch 64", "IVF1024,PQ48 nprobe 256", "IVF1024,PQ48 nprobe 512",
        "IVF1024,PQ96 nprobe 256", "IVF4096,PQ48 nprobe 256", "sign bits 384 + rerank 1000", "sign bits 384 + rerank 5000"]
    by = {r["setting"]: r for r in rows}
    assert by["Flat fp32"]["qps"] == 22.0 and by["Flat fp32"]["run"] == 1  # measured again: this run's row
    assert by["IVF1024,PQ48 nprobe 256"]["run"] == 0 and by["IVF1024,PQ48 nprobe 512"]["run"] == 1
    assert runs[0] == {"machine": "m", "date": "d0", "command": "python bench/scale.py --old", "flat_fp32_qps": 20.0}
    assert runs[1]["command"].endswith("--merge")
    # merging once more keeps the runs and the rows' run numbers
    rows2, runs2 = si.merge({"rows": rows, "runs": runs}, [_row("Flat fp32", "Flat fp32", qps=21.0)], {"command": "c"})
    assert len(runs2) == 3 and {r["setting"]: r["run"] for r in rows2}["IVF1024,PQ48 nprobe 512"] == 1


def test_merge_refuses_another_base():
    si = _scale_index()
    world = {"n": 1000, "real_docs": 5, "dim": 384, "components": 8, "gmm_iter": 10, "queries": {"dev": 3},
             "rerank_file": {"dtype": "float16"}, "base_sha256": "abc", "realism": {"cos": 0.4461466372013092}}
    assert si.same_base(world, dict(world)) is None
    assert "n was 1000" in si.same_base(world, {**world, "n": 2000})
    assert "sha256" in si.same_base(world, {**world, "base_sha256": "abd"})
    legacy = {k: v for k, v in world.items() if k != "base_sha256"}  # an earlier result without a fingerprint
    assert si.same_base(legacy, world) is None
    assert "realism" in si.same_base(legacy, {**world, "realism": {"cos": 0.4461467}})
    assert "neither" in si.same_base({**legacy, "realism": {}}, world)


def test_fingerprint_sees_one_changed_number():
    import numpy as np

    si = _scale_index()
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    base = {"x": x, "queries": {"dev": x[:3], "test": x[3:5]}}
    y = x.copy()
    y[7, 2] += 1e-6
    assert si.fingerprint(base) == si.fingerprint({**base, "x": x.copy()})
    assert si.fingerprint(base) != si.fingerprint({**base, "x": y})


def test_ivf_grids_parse_and_bad_ones_are_refused(tmp_path, capsys):
    import pytest

    scale = _scale()
    assert scale.ivf_grid(["1024:256,512", "4096:1024"]) == [(1024, [256, 512]), (4096, [1024])]
    args = scale.parse_args(["--data", str(tmp_path), "--work-dir", str(tmp_path / "w"), "--nlist", "64",
                             "--nprobe", "8", "16"])
    assert args.ivf == ["64:8,16"]  # --nlist / --nprobe still mean one grid
    for bad in (["--ivf", "1024"], ["--ivf", "64:128"], ["--ivf", "a:1"], ["--merge", "--part", "encode"]):
        with pytest.raises(SystemExit):
            scale.parse_args(["--data", str(tmp_path), "--work-dir", str(tmp_path / "w"), *bad])


def test_the_list_of_each_vector_is_the_coarse_quantisers_nearest_centroid():
    import numpy as np
    import pytest

    faiss = pytest.importorskip("faiss")
    si = _scale_index()
    x = np.random.default_rng(1).standard_normal((600, si.DIM)).astype(np.float32)
    quantizer = faiss.IndexFlatIP(si.DIM)
    index = faiss.IndexIVFFlat(quantizer, si.DIM, 16, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    lists = si.list_of_each(index, len(x))
    assert np.array_equal(lists, quantizer.search(x, 1)[1][:, 0])
