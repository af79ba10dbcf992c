"""bench/common.py (data root, subsamples, timings, result files) and the measure-here / evaluate-there
split of bench/encode.py, on tiny data. The scripts' own --quick runs are in test_bench_quick.py."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reprlab.text.beir import BeirDataset, load_beir, write_beir

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_common", REPO / "bench" / "common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def tiny_beir(folder: Path, n_docs: int = 40, n_queries: int = 6, split: str = "test") -> Path:
    words = ["protein", "cell", "virus", "gene", "drug", "heart", "brain", "lung", "blood", "liver"]
    corpus = {f"d{i}": {"title": words[i % 10], "text": f"{words[i % 10]} {words[(i * 3) % 10]} study {i}"}
              for i in range(n_docs)}
    queries = {f"q{j}": f"{words[j % 10]} study" for j in range(n_queries)}
    qrels = {f"q{j}": {f"d{j}": 1, f"d{j + 10}": 1} for j in range(n_queries)}
    write_beir(folder, BeirDataset(corpus, queries, qrels), split=split)
    return folder


# ----------------------------------------------------------------------------- data root


def test_data_root_honours_the_variable_and_names_it_when_data_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("REPRLAB_SHARED_DATA", str(tmp_path))
    assert common.data_root() == tmp_path
    (tmp_path / "scifact").mkdir()
    assert common.data_path("scifact") == tmp_path / "scifact"
    with pytest.raises(SystemExit) as stop:
        common.data_path("cranfield", "beir")
    assert "REPRLAB_SHARED_DATA" in str(stop.value) and str(tmp_path / "cranfield" / "beir") in str(stop.value)
    assert common.data_path("cranfield", check=False) == tmp_path / "cranfield"  # argparse defaults
    monkeypatch.delenv("REPRLAB_SHARED_DATA")
    assert common.data_root() == REPO.parent / "shared" / "data"


# ----------------------------------------------------------------------------- options


def test_options_check_output_and_give_quick_runs_their_own_work_dir(tmp_path):
    import argparse

    parser = argparse.ArgumentParser(parents=[common.bench_options(work_dir=str(tmp_path / "runs"))])
    args = common.parse(parser, ["--quick", "--output", str(tmp_path / "x.json")])
    assert args.work_dir == tmp_path / "runs-quick" and args.device == "cpu" and not args.append
    assert common.result_path("x", args) == tmp_path / "x.json"
    assert common.result_path("x", common.parse(parser, ["--quick"])) == common.RESULTS / "x-quick.json"
    with pytest.raises(SystemExit):  # a folder given as --output, as older commands did
        common.parse(parser, ["--output", str(tmp_path / "runs")])
    parser.add_argument("--repeats", type=int, default=3)
    with pytest.raises(SystemExit):  # every timing takes 3 passes or more
        common.parse(parser, ["--repeats", "2"])


# ----------------------------------------------------------------------------- subsamples


def test_subsample_keeps_the_judged_documents_of_the_queries_it_draws(tmp_path):
    data = load_beir(tiny_beir(tmp_path / "beir"))
    small = common.subsample(data, 3, 5, seed=1, keep_docs=["d39"])
    assert len(small.queries) == 3 and set(small.qrels) == set(small.queries)
    judged = {d for q in small.qrels for d in small.qrels[q]}
    assert judged | {"d39"} <= set(small.corpus) and len(small.corpus) == len(judged | {"d39"}) + 5
    assert common.subsample(data, 3, 5, seed=1, keep_docs=["d39"]).corpus.keys() == small.corpus.keys()  # seeded


def test_write_subsample_writes_both_splits_over_one_corpus(tmp_path):
    folder = tiny_beir(tmp_path / "beir", n_queries=8)
    tiny_beir(folder, n_queries=8, split="train")
    out = common.write_subsample(folder, tmp_path / "small", {"train": 2, "test": 3}, 4)
    train, test = load_beir(out, split="train"), load_beir(out, split="test")
    assert len(train.qrels) == 2 and len(test.qrels) == 3 and train.corpus == test.corpus
    assert all(d in test.corpus for split in (train, test) for q in split.qrels for d in split.qrels[q])


# ----------------------------------------------------------------------------- timing


def test_timed_takes_at_least_three_passes_and_reports_median_and_spread(monkeypatch):
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # passes of 1, 3 and 2 seconds
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(ticks))
    t = common.timed(lambda: "done", repeat=3)
    assert t["passes"] == [1.0, 3.0, 2.0] and t["median"] == 2.0 and (t["min"], t["max"]) == (1.0, 3.0)
    assert t["spread"] == 1.0 and t.result == "done" and json.loads(json.dumps(t))["median"] == 2.0
    with pytest.raises(ValueError, match="at least 3"):
        common.timed(lambda: None, repeat=2)


def test_timed_interleaved_alternates_the_order_of_the_contestants():
    calls = []
    timings = common.timed_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                       repeat=4, warmup=0, cpu=True)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(len(t["passes"]) == 4 and len(t["cpu"]["passes"]) == 4 for t in timings.values())


# ----------------------------------------------------------------------------- results


def test_write_result_stamps_the_record_and_keeps_a_stamp_it_already_has(tmp_path):
    import argparse

    args = argparse.Namespace(output=tmp_path / "r.json", quick=False)
    written = common.write_result("r", {"rows": [1]}, args, argv=["--quick", "--name", "a b"])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == written and saved["rows"] == [1] and saved["machine"] and saved["date"]
    assert saved["command"].endswith("--quick --name 'a b'")
    kept = common.write_result("r", {"command": "python bench/x.py --measured-elsewhere"}, args)
    assert kept["command"] == "python bench/x.py --measured-elsewhere"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".r.json.*"))


def test_append_benchmarks_creates_the_file_then_appends(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    common.append_benchmarks("## One\n\n| a |", path)
    common.append_benchmarks("## Two", path)
    text = path.read_text()
    assert text.startswith("# reprlab benchmarks") and text.index("## One") < text.index("## Two")


# ----------------------------------------------------------------------------- encode.py, measured elsewhere


def run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_encode_bench_measures_without_faiss_and_evaluates_later(tmp_path, tiny_model_dir):
    from reprlab.encoder import SentenceEncoder

    data = tiny_beir(tmp_path / "beir")
    blocker = tmp_path / "nofaiss"  # the measuring machine has no faiss: its import must fail there
    blocker.mkdir()
    (blocker / "faiss.py").write_text('raise ImportError("faiss is not installed here")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    keep = tmp_path / "keep"
    run(["bench/encode.py", "--model", str(tiny_model_dir), "--data", str(data), "--settings", "reprlab-fp32",
         "reprlab-bf16", "--repeat", "3", "--batch-size", "8", "--threads", "1", "--no-eval", "--keep", str(keep)],
        env=env)
    measured = json.loads((keep / "measure.json").read_text())
    assert [r["setting"] for r in measured["results"]] == ["reprlab-fp32", "reprlab-bf16"]
    assert all(len(r["passes"]) == 3 and (keep / r["vectors"]).is_file() for r in measured["results"])

    out = tmp_path / "encode.json"
    run(["bench/encode.py", "--evaluate", str(keep), "--model", str(tiny_model_dir), "--data", str(data),
         "--output", str(out)])
    record = json.loads(out.read_text())
    fp32, bf16 = record["results"]
    assert record["command"] == measured["command"] and "--evaluate" in record["evaluated"]["command"]
    # the speed ratio and the vector difference are those of the measured runs and files
    assert bf16["ratio"] == pytest.approx(bf16["docs_per_s"] / fp32["docs_per_s"])
    vectors = [np.load(keep / r["vectors"]) for r in (fp32, bf16)]
    assert bf16["max_abs_diff_vs_base"] == pytest.approx(float(np.abs(vectors[1] - vectors[0]).max()))
    assert 0.0 < bf16["max_abs_diff_vs_base"] < 0.1  # bf16 moves the vectors, a little
    # nDCG@10 of the stored fp32 vectors equals a fresh evaluation of the same model here
    model = SentenceEncoder.from_pretrained(str(tiny_model_dir), max_length=measured["max_length"])
    fresh = common.evaluate_dense(model, load_beir(data), batch_size=8)["ndcg_cut_10"]
    assert fp32["ndcg_cut_10"] == pytest.approx(fresh, abs=1e-6)


def test_encode_bench_docs_times_the_first_n_documents_in_every_setting_without_ndcg(tmp_path, tiny_model_dir):
    data = tiny_beir(tmp_path / "beir")
    keep, out = tmp_path / "keep", tmp_path / "encode.json"
    run(["bench/encode.py", "--model", str(tiny_model_dir), "--data", str(data), "--settings", "reprlab-fp32",
         "reprlab-bf16", "--repeat", "3", "--batch-size", "4", "--threads", "1", "--docs", "7", "--keep", str(keep),
         "--output", str(out)])
    record = json.loads(out.read_text())
    assert record["docs"] == 7 and record["partial"] is True
    for r in record["results"]:
        # each setting's own process encoded only the sample, 3 timed passes
        assert np.load(keep / r["vectors"]).shape[0] == 7 and len(r["passes"]) == 3
        assert r["docs_per_s"] == pytest.approx(7 / r["seconds"])
        assert r["ndcg_cut_10"] is None  # 33 of the 40 documents are absent: no quality figure
    proc = subprocess.run([sys.executable, "bench/encode.py", "--data", str(data), "--docs", "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--docs 0" in proc.stderr


def load_bench(name: str, monkeypatch):
    """bench/<name>.py imported by its name, as its spawned pool workers import it (they get sys.path)."""
    import importlib

    monkeypatch.syspath_prepend(str(REPO / "bench"))  # the scripts `import common`
    return importlib.import_module(name)


def test_natural_tasks_merge_keeps_probe_rows_of_other_runs_only_on_the_same_data(monkeypatch):
    nt = load_bench("natural_tasks", monkeypatch)
    rec = {"sizes": {"test": 872}, "n_train": 2000, "bow": {"mean": 0.7}}
    saved = {"lms": {"scratch-ce": {"steps": 4000}},
             "probes": {"sst2": {**rec, "rows": {"scratch-ce/none": {"f": 1}, "minilm-head/none": {"f": 2}}}}}
    new = {"lms": {"minilm-head": {"steps": 1500}},
           "probes": {"sst2": {**rec, "bow": {"mean": 0.8}, "rows": {"minilm-head/none": {"f": 3},
                                                                      "minilm-mlm/prompt": {"f": 4}}}}}
    out = nt.merge(saved, new)
    assert set(out["lms"]) == {"scratch-ce", "minilm-head"}
    rows = out["probes"]["sst2"]["rows"]
    # the rerun replaces its own rows, keeps the others, and orders them as the LMs are listed
    assert rows == {"minilm-head/none": {"f": 3}, "minilm-mlm/prompt": {"f": 4}, "scratch-ce/none": {"f": 1}}
    assert list(rows) == ["minilm-head/none", "minilm-mlm/prompt", "scratch-ce/none"]
    assert out["probes"]["sst2"]["bow"] == {"mean": 0.8}
    # other probe data (here another training size): the old rows do not belong in the table
    other = {"probes": {"sst2": {**rec, "n_train": 500, "rows": {"minilm-head/none": {"f": 5}}}}}
    assert nt.merge(out, other)["probes"]["sst2"]["rows"] == {"minilm-head/none": {"f": 5}}


def test_natural_tasks_probe_pool_gives_the_sequential_results(tmp_path, monkeypatch):
    nt = load_bench("natural_tasks", monkeypatch)
    rng = np.random.default_rng(0)
    arrays = {f"{s}/f": rng.normal(size=(n, 4)).astype("float32") for s, n in (("train", 60), ("dev", 30), ("test", 30))}
    np.savez(tmp_path / "f.npz", **arrays)
    y = {s: (arrays[f"{s}/f"][:, 0] + 0.5 * rng.normal(size=len(arrays[f"{s}/f"])) > 0).astype(int)
         for s in ("train", "dev", "test")}
    units = [(str(tmp_path / "f.npz"), "f", y, 3, n, [1e-2, 1.0]) for n in (20, 12)]
    sequential = nt.map_units(nt.npz_probe_unit, units, 1)
    assert sequential[0] != sequential[1]  # so that a pool returning the units out of order would be caught
    assert nt.map_units(nt.npz_probe_unit, units, 2) == sequential
    # each seed its own disjoint training rows: the same as probing those rows directly
    from reprlab.analysis.natural_tasks import select_probe

    probe, _ = select_probe(arrays["train/f"][20:40], y["train"][20:40], arrays["dev/f"], y["dev"], [1e-2, 1.0])
    assert sequential[0][1] == probe.accuracy(arrays["test/f"], y["test"])


# ----------------------------------------------------------------------------- hashing: vectors made elsewhere


def hashing_models(n_docs: int = 50, n_queries: int = 7, dim: int = 16) -> dict:
    rng = np.random.default_rng(0)
    return {name: {"docs": rng.normal(size=(n_docs, dim)).astype("float32"),
                   "queries": rng.normal(size=(n_queries, dim)).astype("float32")}
            for name in ("MiniLM", "MiniLM + angular loss", "MiniLM + DPR cosine loss")}


def test_hashing_vectors_round_trip_through_parts(tmp_path, monkeypatch):
    hv = load_bench("hashing_vectors", monkeypatch)
    models, doc_ids, qids = hashing_models(), [f"d{i}" for i in range(50)], [f"q{j}" for j in range(7)]
    record = {"settings": {"seed": 3}, "timings": {"train hashing s": 1.5}}
    paths = hv.save(tmp_path, models, doc_ids, qids, record, part_bytes=2_000)
    assert len(paths) > 2 and all(p.stat().st_size <= 2_000 for p in paths)
    loaded, rec = hv.load(tmp_path)
    assert list(loaded) == list(models) and rec["dtype"] == "float32" and rec["timings"] == record["timings"]
    for name, vec in models.items():  # float32: bit for bit, each model its own arrays, in order
        assert loaded[name]["doc_ids"] == doc_ids and loaded[name]["qids"] == qids
        assert np.array_equal(loaded[name]["docs"], vec["docs"]) and np.array_equal(loaded[name]["queries"], vec["queries"])
    # a new save replaces the parts of the old one (here: fewer parts, float16, rounded)
    assert len(hv.save(tmp_path, models, doc_ids, qids, record, dtype="float16")) == 1
    assert [p.name for p in tmp_path.iterdir()] == [f"{hv.NAME}.1-of-1"]
    loaded, rec = hv.load(tmp_path)
    docs = loaded["MiniLM"]["docs"]
    assert rec["dtype"] == "float16" and docs.dtype == np.float32
    assert not np.array_equal(docs, models["MiniLM"]["docs"])
    assert np.allclose(docs, models["MiniLM"]["docs"], rtol=1e-3, atol=1e-4)


def test_hashing_vectors_refuse_missing_or_damaged_parts(tmp_path, monkeypatch):
    hv = load_bench("hashing_vectors", monkeypatch)
    models = hashing_models()
    paths = hv.save(tmp_path, models, [f"d{i}" for i in range(50)], [f"q{j}" for j in range(7)], {}, part_bytes=4_000)
    damaged = bytearray(paths[1].read_bytes())
    damaged[100:110] = bytes(10)
    paths[1].write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="cannot be read"):
        hv.load(tmp_path)
    paths[1].unlink()
    with pytest.raises(FileNotFoundError, match=r"part\(s\) \[2\]"):
        hv.load(tmp_path)
    with pytest.raises(ValueError, match="do not match"):
        hv.save(tmp_path, models, ["d0"], ["q0"], {})


def test_hashing_bench_uses_saved_vectors_only_with_its_own_settings_and_corpus(tmp_path, monkeypatch):
    hashing = load_bench("hashing", monkeypatch)
    models = hashing_models()
    settings = {k: 0 for k in hashing.VECTOR_SETTINGS}
    doc_ids, qids = [f"d{i}" for i in range(50)], [f"q{j}" for j in range(7)]
    hv = hashing.hashing_vectors
    hv.save(tmp_path, models, doc_ids, qids, {"settings": settings, "timings": {"train dpr s": 2.0}, "command": "c",
                                              "machine": "m", "date": "d", "torch": "t"}, dtype="float16")
    args = __import__("argparse").Namespace(vectors=tmp_path, **settings)
    corpus, queries = dict.fromkeys(doc_ids), dict.fromkeys(qids[:5])  # the bench may use a subset of the queries
    vecs, timings, source = hashing.model_vectors(args, corpus, queries)
    assert list(vecs) == list(models) and timings == {"train dpr s": 2.0}
    assert source["from"] == "--vectors" and source["dtype"] == "float16" and source["machine"] == "m"
    with pytest.raises(SystemExit, match="other settings"):
        hashing.model_vectors(__import__("argparse").Namespace(**{**vars(args), "lr": 1}), corpus, queries)
    with pytest.raises(SystemExit, match="another corpus"):
        hashing.model_vectors(args, dict.fromkeys(doc_ids[::-1]), queries)
    with pytest.raises(SystemExit, match="another corpus"):
        hashing.model_vectors(args, corpus, dict.fromkeys(["q-unknown"]))


def test_hashing_search_time_is_the_median_of_the_passes_with_its_spread(monkeypatch):
    hashing = load_bench("hashing", monkeypatch)
    monkeypatch.setattr(hashing.common, "timed", lambda fn, repeat, warmup=0: hashing.common.Timing.of([1.0, 9.0, 2.0]))
    t = hashing.ms_per_query(lambda: None, n_queries=1000, repeats=3)
    assert t == {"ms_per_query": 2.0, "ms_per_query_min": 1.0, "ms_per_query_max": 9.0, "ms_per_query_spread": 4.0,
                 "passes": 3}


def test_clusterformer_table_gives_the_median_and_spread_and_reads_older_records(monkeypatch):
    cf = load_bench("clusterformer", monkeypatch)
    new = {"kind": "full (SDPA)", "tokens": 512, "seconds": 0.30, "median_s": 0.36, "spread": 0.25,
           "passes": [0.36, 0.30, 0.39], "peak_mb": 11.0}
    old = {"kind": "sliding-window", "tokens": 512, "seconds": 0.26, "peak_mb": 12.0}  # fastest only (2026-11-26)
    table = cf.timing_table([new, old])
    assert "| full (SDPA) | 0.36 s (25%) / 11 MB |" in table  # the median, not the fastest pass
    assert "| sliding-window | 0.26 s / 12 MB |" in table
    assert "| cluster-former | n/a |" in table
