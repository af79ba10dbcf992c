"""Hostile input, as a user would type it: every bad input to every command is one line on stderr that names
the offending file, line or option, exit status 2, no traceback, and nothing half-written.

Inputs are built in a temporary folder per case: empty, malformed, binary and non-UTF-8 files, a folder where a
file belongs (and the reverse), truncated model, index and checkpoint files, a model whose config disagrees
with its weights, numbers out of range, huge and non-finite. Numeric options are also fuzzed with hypothesis.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reprlab.cli import main
from reprlab.demo import demo_data_path

# ----------------------------------------------------------------------------- fixtures built once


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """Good inputs (a BEIR folder, a tiny model, an index, a stopped run) and damaged copies of them."""
    root = tmp_path_factory.mktemp("hostile")
    beir = root / "beir"
    shutil.copytree(demo_data_path(), beir)
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    assert main(["-q", "index", "--corpus", str(beir), "--model", str(model), "--out", str(root / "index")]) == 0
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.jsonl").write_text("")
    (bad / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    (bad / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (bad / "trunc.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": broken\n')
    (bad / "afile").write_text("not a folder")
    (bad / "emptydir").mkdir()
    for name, damage in (("ids", "ids.json"), ("docs", "docs.jsonl"), ("meta", "meta.json"), ("faiss", "index.faiss")):
        copy = bad / f"index-{name}"
        shutil.copytree(root / "index", copy)
        data = (copy / damage).read_bytes()
        (copy / damage).write_bytes(data[: max(1, len(data) // 3)])
    mismatch = bad / "model-mismatch"
    shutil.copytree(model, mismatch)
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["hidden_size"] = cfg["reprlab"]["hidden_size"] = 64
    (mismatch / "config.json").write_text(json.dumps(cfg))
    trunc = bad / "model-trunc"
    shutil.copytree(model, trunc)
    (trunc / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:1000])
    badjson = bad / "model-json"
    shutil.copytree(model, badjson)
    (badjson / "config.json").write_text("{not json")
    run = root / "run"
    assert main(["-q", "train", "dpr", "--data", str(beir), "--split", "test", "--model", str(model), "--out", str(run),
                 "--max-steps", "2", "--batch-size", "4", "--checkpoint-every", "1", "--passage-max-length", "32"]) == 0
    for name, damage in (("state", "trainer_state.json"), ("weights", "model.safetensors"),
                         ("tensors", "trainer_state.safetensors")):
        copy = bad / f"run-{name}"
        shutil.copytree(run, copy)
        for ckpt in (copy / "checkpoints").iterdir():
            data = (ckpt / damage).read_bytes()
            (ckpt / damage).write_bytes(data[: len(data) // 2])
    return root


def fill(argv: list[str], root: Path) -> list[str]:
    names = {"BEIR": root / "beir", "MODEL": root / "model", "INDEX": root / "index", "RUN": root / "run"}
    out = []
    for a in argv:
        for key, value in names.items():
            a = a.replace(key, str(value))
        out.append(a.replace("BAD/", str(root / "bad") + "/").replace("OUT/", str(root / "out") + "/"))
    return out


TRAIN = ["train", "dpr", "--data", "BEIR", "--split", "test", "--model", "MODEL", "--batch-size", "4",
         "--passage-max-length", "32", "--max-steps", "2"]
CASES = {
    # corpora: empty, binary, wrong encoding, malformed, folders and files swapped, missing
    "index empty corpus": (["index", "--corpus", "BAD/empty.jsonl", "--out", "OUT/i1"], ["empty"]),
    "index binary corpus": (["index", "--corpus", "BAD/binary.jsonl", "--out", "OUT/i2"], ["binary.jsonl:1"]),
    "index truncated corpus": (["index", "--corpus", "BAD/trunc.jsonl", "--out", "OUT/i3"], ["trunc.jsonl:2"]),
    "index folder without corpus": (["index", "--corpus", "BAD/emptydir", "--out", "OUT/i4"], ["emptydir"]),
    "index missing corpus": (["index", "--corpus", "BAD/nothing", "--out", "OUT/i5"], ["nothing"]),
    "index out is a file": (["index", "--corpus", "BEIR", "--model", "MODEL", "--out", "BAD/afile"], ["afile"]),
    "index out under a file": (["index", "--corpus", "BEIR", "--out", "BAD/afile/sub"], ["afile"]),
    "pmi-vocab latin-1": (["pmi-vocab", "--corpus", "BAD/latin1.txt", "--out", "OUT/p.json", "--model", "none"],
                          ["latin1.txt", "UTF-8"]),
    "pmi-vocab out is a folder": (["pmi-vocab", "--corpus", "BEIR", "--out", "BAD/emptydir"], ["emptydir"]),
    "pretrain empty corpus": (["pretrain", "mlm", "--corpus", "BAD/empty.jsonl", "--model", "MODEL", "--out", "OUT/m"],
                              ["empty.jsonl"]),
    "distill binary corpus": (["distill", "kd", "--corpus", "BAD/binary.jsonl", "--teacher", "MODEL", "--out", "OUT/d"],
                              ["binary.jsonl"]),
    # models: missing, truncated, config and weights disagree, bad JSON
    "model missing": (["index", "--corpus", "BEIR", "--model", "BAD/nomodel", "--out", "OUT/i6"], ["nomodel"]),
    "model truncated": (["index", "--corpus", "BEIR", "--model", "BAD/model-trunc", "--out", "OUT/i7"],
                        ["model-trunc", "safetensors"]),
    "model config disagrees": (["index", "--corpus", "BEIR", "--model", "BAD/model-mismatch", "--out", "OUT/i8"],
                               ["model-mismatch", "does not fit"]),
    "model config not json": (["index", "--corpus", "BEIR", "--model", "BAD/model-json", "--out", "OUT/i9"],
                              ["config.json"]),
    # indexes: truncated files, a file instead of the folder
    "index ids truncated": (["search", "--index", "BAD/index-ids", "q"], ["ids.json"]),
    "index docs truncated": (["search", "--index", "BAD/index-docs", "q"], ["docs.jsonl"]),
    "index meta truncated": (["search", "--index", "BAD/index-meta", "q"], ["meta.json"]),
    "index faiss truncated": (["search", "--index", "BAD/index-faiss", "q"], ["index-faiss"]),
    "index is a file": (["search", "--index", "BAD/afile", "q"], ["afile"]),
    "empty query": (["search", "--index", "INDEX", ""], ["empty"]),
    # checkpoints: damaged files on --resume, a changed setting
    "resume damaged state": ([*TRAIN[:-1], "4", "--out", "BAD/run-state", "--resume"], ["trainer_state.json"]),
    "resume damaged weights": ([*TRAIN[:-1], "4", "--out", "BAD/run-weights", "--resume"], ["run-weights"]),
    "resume damaged tensors": ([*TRAIN[:-1], "4", "--out", "BAD/run-tensors", "--resume"], ["run-tensors"]),
    "resume changed lr": ([*TRAIN[:-1], "4", "--out", "RUN", "--resume", "--lr", "0.5"], ["lr", "allow-config-change"]),
    "train without resume": ([*TRAIN, "--out", "RUN"], ["--resume"]),
    # numbers out of range
    "max-steps 0": ([*TRAIN[:-1], "0", "--out", "OUT/t1"], ["--max-steps"]),
    "max-steps -1": ([*TRAIN[:-1], "-1", "--out", "OUT/t2"], ["--max-steps"]),
    "lr -1": ([*TRAIN, "--lr", "-1", "--out", "OUT/t3"], ["--lr"]),
    "lr nan": ([*TRAIN, "--lr", "nan", "--out", "OUT/t4"], ["--lr"]),
    "checkpoint-every -1": ([*TRAIN, "--checkpoint-every", "-1", "--out", "OUT/t5"], ["--checkpoint-every"]),
    "num-negatives -1": ([*TRAIN, "--num-negatives", "-1", "--out", "OUT/t6"], ["--num-negatives"]),
    "dev-fraction 2": ([*TRAIN, "--dev-fraction", "2", "--out", "OUT/t7"], ["--dev-fraction"]),
    "k 0": (["search", "--index", "INDEX", "q", "-k", "0"], ["k must be a positive integer"]),
    "k -3": (["search", "--index", "INDEX", "q", "-k", "-3"], ["k must be a positive integer"]),
    "evaluate ks without multihop": (["evaluate", "--data", "BEIR", "--retriever", "bm25", "--ks", "0"], ["--ks"]),
    "bm25 weights nan": (["search", "--multihop", "--index", "INDEX", "q", "--bm25-weights", "nan,inf"],
                         ["--bm25-weights"]),
    "mine depth 0": (["mine", "--data", "BEIR", "--split", "test", "--out", "OUT/n.jsonl", "--depth", "0"], ["--depth"]),
    "model-info seq-len 0": (["model-info", "tiny", "--seq-len", "0"], ["seq_len"]),
    "wrong type": ([*TRAIN, "--lr", "fast", "--out", "OUT/t8"], ["--lr"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_naming_it_and_exit_2(case, world, capsys):
    argv, needles = CASES[case]
    argv = fill(argv, world)
    before = {p for p in (world / "out").rglob("*")} if (world / "out").exists() else set()
    try:
        code = main(["-q", *argv])
    except SystemExit as exc:  # an option's type or choices, refused by argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"{case}: exit {code}\n{err}"
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], f"{case}: {needle!r} not in {lines[0]!r}"
    after = {p for p in (world / "out").rglob("*")} if (world / "out").exists() else set()
    assert not [p for p in after - before if p.name.endswith(".tmp")], "a half-written file was left behind"


# ----------------------------------------------------------------------------- numbers, fuzzed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.one_of(st.integers(min_value=-10**13, max_value=10**13), st.floats(allow_nan=True)))
def test_any_k_either_searches_or_is_a_one_line_error(world, capsys, k):
    try:
        code = main(["-q", "search", "--index", str(world / "index"), "a query", "-k", str(k)])
    except SystemExit as exc:  # argparse: not an integer
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert len([x for x in err.splitlines() if x.strip()]) == 1 and "Traceback" not in err


@settings(max_examples=60, deadline=None)
@given(values=st.fixed_dictionaries({}, optional={
    "max_steps": st.one_of(st.none(), st.integers(-5, 5)),
    "epochs": st.floats(allow_nan=True, allow_infinity=True),
    "batch_size": st.integers(-3, 64),
    "grad_accum": st.integers(-2, 8),
    "lr": st.floats(allow_nan=True, allow_infinity=True),
    "warmup_ratio": st.floats(allow_nan=True, allow_infinity=True),
    "checkpoint_every": st.integers(-3, 10),
    "checkpoint_minutes": st.floats(allow_nan=True, allow_infinity=True),
    "log_every": st.integers(-3, 10),
    "max_grad_norm": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
}))
def test_any_loop_setting_is_accepted_or_refused_by_name(values):
    from reprlab.errors import ConfigError
    from reprlab.train import TrainConfig

    try:
        config = TrainConfig(output_dir="x", **values)
    except ConfigError as exc:
        assert exc.field in values, (exc.field, values)
        return
    assert config.lr > 0 and config.batch_size >= 1 and config.log_every >= 1
    assert config.max_steps is None or config.max_steps >= 1


def test_a_config_with_fewer_layers_than_its_weights_is_refused(world, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(world / "model", model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["num_hidden_layers"] = cfg["reprlab"]["num_layers"] = 1
    (model / "config.json").write_text(json.dumps(cfg))
    code = main(["-q", "index", "--corpus", str(world / "beir"), "--model", str(model), "--out", str(tmp_path / "i")])
    err = capsys.readouterr().err
    assert code == 2 and "does not use" in err and not (tmp_path / "i").exists(), err


def test_qrels_naming_unknown_documents_are_an_error_with_strict_qrels(world, tmp_path, capsys):
    import shutil

    beir = tmp_path / "beir"
    shutil.copytree(world / "beir", beir)
    with open(beir / "qrels" / "test.tsv", "a") as f:
        f.write("q1\tno-such-doc\t1\n")
    assert main(["-q", "evaluate", "--data", str(beir), "--retriever", "bm25", "--json"]) == 0
    capsys.readouterr()
    assert main(["-q", "evaluate", "--data", str(beir), "--retriever", "bm25", "--strict-qrels"]) == 2
    assert "no-such-doc" in capsys.readouterr().err
