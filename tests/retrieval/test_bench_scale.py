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
