"""Hostile input for the commands added after ``tests/test_hostile.py``: recommend, train deep-retrieval, pretrain
jaket, kg-eval, train fid, score-passages, train reader-distill, analyze cka, train image-classifier, serve (startup
options and input files), export onnx, index --vectors / --engine ray / --backend qdrant and pretrain mlm --loss quad.

Every case is typed as a user would and must give one line on stderr that names the offending file, line or option,
exit status 2, no traceback, and leave nothing half-written (no temporary file, and an ``--out`` under the scratch
folder is not created). Inputs are built in a temporary folder once per module: empty, binary, non-UTF-8 and
malformed files, folders where files belong (and the reverse), truncated model, index, checkpoint-like, ONNX, IDX
and vector-shard files, ids that do not exist, numbers that are zero, negative, huge or not finite. Cases of an
optional package (serve, onnx, ray, qdrant) skip when it is absent. A few numeric options are fuzzed with hypothesis.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reprlab.cli import main
from reprlab.demo import demo_data_path

# tests/ has no __init__.py, so pytest puts it on sys.path
from hostile_methods_cases import CASES, DR_SMALL, FID, IC_SMALL, RDI

DATA = Path(__file__).resolve().parent / "data"  # tiny_ratings/, tiny_hotpot.jsonl: shared with test_recipes.py
TINY_KG = DATA / "tiny_kg"  # a 15-entity KG in the WN18RR layout
BINARY = b"\xff\xfe\x00\x81garbage\x00"

# ----------------------------------------------------------------------------- the world, built once


def _squad(path: Path) -> None:
    contexts = ["Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title.",
                "The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California."]
    answers = ["Denver Broncos", "Levi's Stadium"]
    paragraphs = [{"context": c, "qas": [{"id": f"q{i}", "question": f"Question {i} about the game?",
                                          "answers": [{"text": a, "answer_start": c.index(a)}]}]}
                  for i, (c, a) in enumerate(zip(contexts, answers))]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": paragraphs}]}))


def _idx(images: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    n = len(images)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    return header + images.tobytes(), bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + labels.tobytes()


def _images(folder: Path, n: int = 64) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    raw_images, raw_labels = _idx(rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
                                  (np.arange(n) % 10).astype(np.uint8))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw_images))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw_labels))


def _damaged_copy(source: Path, target: Path, file: str, keep: float = 0.5) -> None:
    shutil.copytree(source, target)
    data = (target / file).read_bytes()
    (target / file).write_bytes(data[: max(1, int(len(data) * keep))])


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """Good inputs (a tiny model, an index, a Deep Retrieval model, a FiD reader, a ResNet, a KG, vector shards)
    and damaged copies of them under ``bad/``."""
    root = tmp_path_factory.mktemp("hostile-methods")
    _good_inputs(root, tiny_model_dir)
    bad = root / "bad"
    bad.mkdir()
    _damaged_files(root, bad)
    _damaged_runs_and_indexes(root, bad)
    return root


def _good_inputs(root: Path, tiny_model_dir: Path) -> None:
    from reprlab.qa.fid import FidConfig, FidReader

    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    beir = root / "beir"
    shutil.copytree(demo_data_path(), beir)
    kg = root / "kg"
    shutil.copytree(TINY_KG, kg)
    shutil.copytree(DATA / "tiny_ratings", root / "ratings")
    shutil.copy(DATA / "tiny_hotpot.jsonl", root / "hotpot.jsonl")
    _squad(root / "squad.json")
    _images(root / "images")
    torch.manual_seed(0)
    FidReader.from_encoder(model, FidConfig(passage_max_length=32, answer_max_length=4)).save_pretrained(root / "fid")
    q = ["-q"]
    assert main([*q, "index", "--corpus", str(beir), "--model", str(model), "--out", str(root / "index")]) == 0
    assert main([*q, "train", "deep-retrieval", "--data", str(root / "ratings"), "--out", str(root / "dr"), *DR_SMALL,
                 "--max-steps", "2"]) == 0
    assert main([*q, "train", "image-classifier", "--data", str(root / "images"), "--out", str(root / "ic"),
                 *IC_SMALL]) == 0


def _damaged_files(root: Path, bad: Path) -> None:
    """Damaged data files and model folders, by command."""
    (bad / "empty.txt").write_text("")
    (bad / "empty.jsonl").write_text("")
    (bad / "binary.jsonl").write_bytes(BINARY)
    (bad / "binary.json").write_bytes(BINARY)
    (bad / "binary.tsv").write_bytes(BINARY)
    (bad / "afile").write_text("not a folder")
    (bad / "emptydir").mkdir()
    # recommend: damaged model folders
    for name, file in (("cfg", "config.json"), ("w", "model.safetensors"), ("users", "users.json")):
        _damaged_copy(root / "dr" / "model", bad / f"dr-{name}", file)
    for name, file, edit in (
            ("few-items", "items.json", lambda d: {**d, "ids": d["ids"][:3]}),
            ("items-list", "items.json", lambda d: [1, 2]),
            ("bad-history", "users.json", lambda d: {**d, "histories": [[999, -5], *d["histories"][1:]]}),
            ("short-users", "users.json", lambda d: {**d, "histories": d["histories"][:2]}),
            ("no-history-length", "config.json", lambda d: {k: v for k, v in d.items() if k != "history_length"})):
        shutil.copytree(root / "dr" / "model", bad / f"dr-{name}")
        path = bad / f"dr-{name}" / file
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    # deep retrieval: interaction files
    good = (root / "ratings" / "u.data").read_text()
    latin1 = good.encode() + "1\t2\t3\tcaf\xe9\n".encode("latin-1")
    for name, content in (("empty", b""), ("binary", BINARY), ("latin1", latin1),
                          ("3col", b"1\t2\t3\n"), ("huge-id", (good + "99999999999999999999\t2\t3\t4\n").encode()),
                          ("nan-rating", (good + "1\t2\tnan\t4\n").encode()), ("item-dir", good.encode())):
        (bad / f"r-{name}").mkdir()
        (bad / f"r-{name}" / "u.data").write_bytes(content)
    (bad / "r-item-dir" / "u.item").mkdir()
    # knowledge graphs
    for name, file, content in (("ent-binary", "entity2text.txt", BINARY), ("train-empty", "train.tsv", b""),
                                ("test-empty", "test.tsv", b""), ("train-binary", "train.tsv", BINARY),
                                ("train-unknown", "train.tsv",
                                 (TINY_KG / "train.tsv").read_bytes() + b"e01\t_hypernym\tzzz\n"),
                                ("train-2col", "train.tsv",
                                 (TINY_KG / "train.tsv").read_bytes() + b"e01\t_hypernym\n")):
        shutil.copytree(TINY_KG, bad / f"kg-{name}")
        (bad / f"kg-{name}" / file).write_bytes(content)
    (bad / "cat-unknown.tsv").write_text("zzz\tnoun.x\n")
    (bad / "cat-empty.tsv").write_text("")
    (bad / "labelled-unknown.tsv").write_text("e01\t_nope\te02\n")
    (bad / "text-trunc.jsonl").write_text('{"text": "a dog", "mentions": [[2, 5, "e01"]]}\n{"text": ')
    (bad / "text-outside.jsonl").write_text('{"text": "a dog", "mentions": [[0, 99, "e01"]]}\n')
    # QA files
    hotpot = (root / "hotpot.jsonl").read_text()
    latin1_line = '{"question_id": "x", "question_text": "caf\xe9"}\n'.encode("latin-1")
    (bad / "latin1.jsonl").write_bytes(hotpot.encode() + latin1_line)
    (bad / "trunc.jsonl").write_text(hotpot[: len(hotpot) // 2 + 7])
    (bad / "nocontexts.jsonl").write_text(json.dumps({"question_id": "q1", "question_text": "Where?",
                                                      "answers_objects": [{"spans": ["x"]}]}) + "\n")
    squad = json.loads((root / "squad.json").read_text())
    (bad / "squad-trunc.json").write_text(json.dumps(squad)[:300])
    squad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 99999
    (bad / "squad-badstart.json").write_text(json.dumps(squad))
    _damaged_copy(root / "fid", bad / "fid-w", "model.safetensors")
    # images and ResNets
    raw = gzip.decompress((root / "images" / "train-images-idx3-ubyte.gz").read_bytes())
    raw_labels = gzip.decompress((root / "images" / "train-labels-idx1-ubyte.gz").read_bytes())
    for name, file, content in (
            ("img-trunc-gz", "train-images-idx3-ubyte.gz",
             (root / "images" / "train-images-idx3-ubyte.gz").read_bytes()[:500]),
            ("img-not-gz", "train-images-idx3-ubyte.gz", b"garbage, not gzip"),
            ("img-trunc-raw", "train-images-idx3-ubyte.gz", gzip.compress(raw[:1000])),
            ("img-few-labels", "train-labels-idx1-ubyte.gz", gzip.compress(raw_labels[:20]))):
        shutil.copytree(root / "images", bad / name)
        (bad / name / file).write_bytes(content)
    _damaged_copy(root / "ic" / "model", bad / "ic-w", "model.safetensors")
    _damaged_copy(root / "ic" / "model", bad / "ic-cfg", "config.json")
    (bad / "scores-bad.json").write_text("{not json")


def _damaged_runs_and_indexes(root: Path, bad: Path) -> None:
    """Runs with damaged checkpoints and stage manifests (--resume), damaged indexes, vector shards and ONNX graphs."""
    q, model, beir = ["-q"], root / "model", root / "beir"
    assert main([*q, *fill(RDI, root), "--data", str(root / "hotpot.jsonl"), "--out", str(root / "rd")]) == 0
    _damaged_copy(root / "rd", bad / "rdrun-manifest", "iter-1/manifest.json")
    for run in ("dr", "ic"):
        for name, file in (("state", "trainer_state.json"), ("weights", "model.safetensors"),
                           ("tensors", "trainer_state.safetensors")):
            shutil.copytree(root / run, bad / f"{run}run-{name}")
            for checkpoint in (bad / f"{run}run-{name}" / "checkpoints").iterdir():
                data = (checkpoint / file).read_bytes()
                (checkpoint / file).write_bytes(data[: len(data) // 2])
    # indexes
    for name, file in (("ids", "ids.json"), ("docs", "docs.jsonl"), ("faiss", "index.faiss")):
        _damaged_copy(root / "index", bad / f"index-{name}", file, keep=1 / 3)
    (bad / "pmi-not-vocab.json").write_text("[1, 2]")
    (bad / "pmi-binary.json").write_bytes(BINARY)
    if _has("pyarrow"):
        assert main([*q, "index", "--corpus", str(beir), "--model", str(model), "--out", str(root / "index-v"),
                     "--vectors", str(root / "vectors"), "--shard-size", "10"]) == 0
        _damaged_copy(root / "vectors", bad / "vectors-manifest", "manifest.json")
        shutil.copytree(root / "vectors", bad / "vectors-shard")
        shard = sorted((bad / "vectors-shard").glob("*.parquet"))[0]
        shard.write_bytes(shard.read_bytes()[:100])
    if _has("onnxruntime") and _has("onnx"):
        assert main([*q, "export", "onnx", "--model", str(model), "--out", str(root / "onnx")]) == 0
        shutil.copytree(root / "onnx", bad / "onnx-trunc")
        graph = bad / "onnx-trunc" / "model.onnx"
        graph.write_bytes(graph.read_bytes()[:1000])


def fill(argv: list[str], root: Path) -> list[str]:
    names = {"MODEL": "model", "BEIR": "beir", "INDEX": "index", "DRMODEL": "dr/model", "RATINGS": "ratings",
             "HOTPOT": "hotpot.jsonl", "SQUAD": "squad.json", "FIDDIR": "fid", "IMAGES": "images",
             "RESNET": "ic/model", "KGDIR": "kg", "VECTORS": "vectors", "ONNXDIR": "onnx", "DRRUN": "dr", "ICRUN": "ic", "RDRUN": "rd"}
    out = []
    for a in argv:
        if a in names:
            a = str(root / names[a])
        out.append(a.replace("BAD/", str(root / "bad") + "/").replace("OUT/", str(root / "out") + "/"))
    return out


def _out_paths(argv: list[str], root: Path) -> list[Path]:
    scratch = str(root / "out")
    return [Path(b) for a, b in zip(argv, argv[1:]) if a in ("--out", "--vectors", "--qdrant-path")
            and b.startswith(scratch)]


def _no_server(monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")

    def refuse(*args, **kwargs):
        raise AssertionError("the server would have started: the bad input was not refused")

    monkeypatch.setattr(uvicorn, "run", refuse)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_naming_it_and_exit_2(case, world, capsys, monkeypatch):
    argv, needles, *needs = CASES[case]
    for module in (needs[0] if needs else ()):
        pytest.importorskip(module, reason=f"{module} is not installed (an optional extra)")
    if argv[0] == "serve":
        _no_server(monkeypatch)
    argv = fill(argv, world)
    (world / "out").mkdir(exist_ok=True)
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
    for path in _out_paths(argv, world):
        assert not path.exists(), f"{case}: {path} was written although the input was refused"
    assert not [p for p in world.rglob("*.tmp")], "a half-written file was left behind"


# ----------------------------------------------------------------------------- inputs that are odd but fine


def test_more_items_than_exist_are_all_items_and_a_huge_beam_is_clamped(world, capsys):
    assert main(["-q", "recommend", "--model", str(world / "dr" / "model"), "--user", "1", "-k", "1000000000000",
                 "--beam", "1000000000000", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert 0 < len(rows) <= 12 and len({r["item"] for r in rows}) == len(rows)


def test_more_fid_passages_than_the_pool_train_without_allocating_them(world, tmp_path):
    argv = fill([*FID, "--data", "HOTPOT", "--n-passages", "1000000", "--out", str(tmp_path / "run")], world)
    assert main(["-q", *argv]) == 0
    assert (tmp_path / "run" / "model").is_dir()


def test_a_busy_port_fails_before_loading(world, capsys, monkeypatch):
    _no_server(monkeypatch)
    pytest.importorskip("fastapi")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["-q", "serve", "--index", str(world / "index"), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"--port {port}" in err, err


def test_an_unexpected_error_is_one_line_asking_for_a_report_and_debug_shows_it(world, capsys, monkeypatch):
    from reprlab.recsys import recipe

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(recipe.Recommender, "recommend", broken)
    argv = ["recommend", "--model", str(world / "dr" / "model"), "--user", "1"]
    assert main(["-q", *argv]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "please report" in err and "Traceback" not in err, err
    with pytest.raises(ZeroDivisionError):
        main(["-q", "--debug", *argv])


# ----------------------------------------------------------------------------- numbers, fuzzed


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(min_value=-10**13, max_value=10**13), beam=st.integers(min_value=-5, max_value=10**12))
def test_any_k_and_beam_either_recommend_or_are_one_line(world, capsys, k, beam):
    try:
        code = main(["-q", "recommend", "--model", str(world / "dr" / "model"), "--user", "3", "-k", str(k),
                     "--beam", str(beam), "--json"])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code in (0, 2), err
    if code == 2:
        assert k < 1 or beam < 1
        assert len([x for x in err.splitlines() if x.strip()]) == 1 and "Traceback" not in err
    else:
        assert len(json.loads(out)) <= min(k, 12)


NUMBER = st.one_of(st.integers(-10**7, 10**7), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=80, deadline=None)
@given(values=st.fixed_dictionaries({}, optional={
    "depth": st.integers(-2, 10), "width": st.integers(-2, 10**7), "paths_per_item": st.integers(-2, 50),
    "negatives": st.integers(-3, 10**6), "alpha": NUMBER, "em_decay": NUMBER, "rerank_weight": NUMBER,
    "min_rating": NUMBER, "beam": st.integers(-2, 10**9), "em_candidates": st.integers(-2, 60),
    "em_explore": NUMBER}))
def test_any_deep_retrieval_setting_is_accepted_or_refused_by_name(values):
    import math

    from reprlab.errors import ConfigError
    from reprlab.recsys.recipe import MAX_PATHS, DeepRetrievalConfig

    try:
        config = DeepRetrievalConfig(output_dir="x", data="y", **values)
    except ConfigError as exc:  # the field given, or the one of a pair it conflicts with
        assert exc.field in values or (exc.field == "em_candidates" and "paths_per_item" in values), (exc.field, values)
        return
    assert 1 <= config.depth <= 6 and config.width ** config.depth <= MAX_PATHS
    assert math.isfinite(config.alpha) and config.alpha >= 0 and 0 < config.em_decay <= 1
    assert math.isfinite(config.min_rating) and config.beam >= 1 and 0 <= config.em_explore < 1


@settings(max_examples=80, deadline=None)
@given(values=st.fixed_dictionaries({}, optional={
    "budget": NUMBER, "mask_prob": NUMBER, "random_prob": NUMBER, "span_p": NUMBER, "span_max": st.integers(-2, 20),
    "fe_copies": st.one_of(st.none(), st.integers(-2, 10**6)), "output_embedding_size": st.integers(-2, 10**8),
    "head_warmup_steps": st.integers(-2, 10)}))
def test_any_mlm_setting_is_accepted_or_refused_by_name(values):
    import math

    from reprlab.errors import ConfigError
    from reprlab.pretrain.mlm import MLMConfig

    extra = {"tie_head": False} if "output_embedding_size" in values else {}
    try:
        config = MLMConfig(corpus=["c"], output_dir="x", max_length=32, loss="quad", **extra, **values,
                           train={"max_steps": 5})
    except ConfigError as exc:
        # the sum rule (mask_prob + random_prob <= 1) names random_prob and its message both: either may be the one set
        pair = {"mask_prob", "random_prob"} if exc.field == "random_prob" and "is more than 1" in str(exc) else set()
        assert exc.field in values or pair & set(values), (exc.field, values)
        return
    assert all(math.isfinite(getattr(config, f)) for f in ("budget", "mask_prob", "random_prob", "span_p"))
    assert config.mask_prob + config.random_prob <= 1 and config.head_warmup_steps < 5
    assert config.fe_copies is None or 2 <= config.fe_copies <= 30
