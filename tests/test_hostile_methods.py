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
    from reprlab.qa.fid import FidConfig, FidReader

    root = tmp_path_factory.mktemp("hostile-methods")
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

    bad = root / "bad"
    bad.mkdir()
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
    # runs with damaged checkpoints and stage manifests (--resume)
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
    return root


DR_SMALL = ["--depth", "2", "--width", "3", "--paths-per-item", "2", "--dim", "8", "--hidden", "8", "--node-dim", "4",
            "--history-length", "4", "--negatives", "3", "--em-every", "1", "--em-beam", "3", "--em-candidates", "3",
            "--no-evaluate", "--batch-size", "4"]
IC_SMALL = ["--depth", "8", "--width", "0.25", "--max-steps", "2", "--batch-size", "8", "--device", "cpu"]


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


# ----------------------------------------------------------------------------- the cases

REC = ["recommend", "--model", "DRMODEL", "--user", "1"]
DRT = ["train", "deep-retrieval", *DR_SMALL, "--max-steps", "2"]
KGE = ["kg-eval", "--model", "MODEL", "--steps", "2", "--batch-size", "4"]
JAK = ["pretrain", "jaket", "--model", "MODEL", "--kg", "KGDIR", "--lm1-layers", "1", "--km-dim", "16",
       "--km-heads", "2", "--max-length", "32", "--max-steps", "2", "--batch-size", "4", "--device", "cpu"]
FID = ["train", "fid", "--model", "MODEL", "--n-passages", "2", "--eval-passages", "2", "--evaluate", "none",
       "--passage-max-length", "32", "--answer-max-length", "4", "--max-steps", "2", "--batch-size", "2",
       "--device", "cpu"]
SCO = ["score-passages", "--reader", "FIDDIR", "--candidates", "3", "--max-questions", "2", "--questions", "all"]
RDI = ["train", "reader-distill", "--reader", "FIDDIR", "--student", "MODEL", "--iterations", "2", "--candidates", "3",
       "--sample", "2", "--eval-fraction", "0", "--no-evaluate", "--query-max-length", "16",
       "--passage-max-length", "32", "--max-steps", "2", "--batch-size", "2", "--device", "cpu"]
CKA = ["analyze", "cka", "--batch-size", "8", "--max-examples", "32"]
ICL = ["train", "image-classifier", *IC_SMALL]
MLM = ["pretrain", "mlm", "--model", "MODEL", "--corpus", "BEIR", "--loss", "quad", "--max-length", "32", "--max-steps",
       "2", "--batch-size", "4", "--device", "cpu"]
IDX = ["index", "--corpus", "BEIR", "--model", "MODEL"]
SRV = ["serve", "--index", "INDEX"]

SERVE = ("uvicorn", "fastapi")
ONNX = ("onnxruntime", "onnx")
CASES = {
    # recommend: unknown ids, damaged model folders, numbers
    "recommend unknown user": ([*REC[:-1], "999"], ["user 999", "not in this model"]),
    "recommend negative user": ([*REC[:-1], "-1"], ["user -1"]),
    "recommend user not an integer": ([*REC[:-1], "abc"], ["--user"]),
    "recommend k 0": ([*REC, "-k", "0"], ["-k"]),
    "recommend beam 0": ([*REC, "--beam", "0"], ["--beam"]),
    "recommend an encoder folder": (["recommend", "--model", "MODEL", "--user", "1"], ["deep-retrieval"]),
    "recommend the run folder": (["recommend", "--model", "BAD/../dr", "--user", "1"], ["config.json is missing"]),
    "recommend missing model": (["recommend", "--model", "BAD/nothing", "--user", "1"], ["nothing"]),
    "recommend a file as model": (["recommend", "--model", "BAD/afile", "--user", "1"], ["afile"]),
    "recommend truncated weights": (["recommend", "--model", "BAD/dr-w", "--user", "1"], ["dr-w", "model.safetensors"]),
    "recommend truncated config": (["recommend", "--model", "BAD/dr-cfg", "--user", "1"], ["dr-cfg", "config.json"]),
    "recommend truncated users": (["recommend", "--model", "BAD/dr-users", "--user", "1"], ["users.json"]),
    "recommend items disagree with weights": (["recommend", "--model", "BAD/dr-few-items", "--user", "1"],
                                              ["items.json", "12 items"]),
    "recommend items not an object": (["recommend", "--model", "BAD/dr-items-list", "--user", "1"], ["items.json"]),
    "recommend history of unknown items": (["recommend", "--model", "BAD/dr-bad-history", "--user", "1"],
                                           ["users.json", "outside"]),
    "recommend users cut short": (["recommend", "--model", "BAD/dr-short-users", "--user", "9"], ["users.json"]),
    "recommend config without history length": (["recommend", "--model", "BAD/dr-no-history-length", "--user", "1"],
                                                ["config.json", "history_length"]),
    # train deep-retrieval: interaction files and numbers
    "dr empty u.data": ([*DRT, "--data", "BAD/r-empty", "--out", "OUT/dr1"], ["u.data", "empty"]),
    "dr binary u.data": ([*DRT, "--data", "BAD/r-binary", "--out", "OUT/dr2"], ["u.data", "UTF-8"]),
    "dr latin-1 u.data": ([*DRT, "--data", "BAD/r-latin1", "--out", "OUT/dr3"], ["r-latin1/u.data", "UTF-8"]),
    "dr three columns": ([*DRT, "--data", "BAD/r-3col", "--out", "OUT/dr4"], ["u.data:1", "4 columns"]),
    "dr id beyond 64 bits": ([*DRT, "--data", "BAD/r-huge-id", "--out", "OUT/dr5"], ["u.data:81", "64-bit"]),
    "dr nan rating": ([*DRT, "--data", "BAD/r-nan-rating", "--out", "OUT/dr6"], ["u.data:81", "rating"]),
    "dr u.item is a folder": ([*DRT, "--data", "BAD/r-item-dir", "--out", "OUT/dr7"], ["u.item", "not a file"]),
    "dr folder without u.data": ([*DRT, "--data", "BAD/emptydir", "--out", "OUT/dr8"], ["emptydir", "u.data"]),
    "dr missing data": ([*DRT, "--data", "BAD/nothing", "--out", "OUT/dr9"], ["nothing"]),
    "dr min-rating above all": ([*DRT, "--data", "RATINGS", "--min-rating", "100", "--out", "OUT/dr10"], ["no rating"]),
    "dr width huge": ([*DRT, "--data", "RATINGS", "--width", "1000000", "--out", "OUT/dr11"], ["--width", "K^D"]),
    "dr width 1": ([*DRT, "--data", "RATINGS", "--width", "1", "--out", "OUT/dr12"], ["--width"]),
    "dr depth 0": ([*DRT, "--data", "RATINGS", "--depth", "0", "--out", "OUT/dr13"], ["--depth"]),
    "dr paths beyond candidates": ([*DRT, "--data", "RATINGS", "--paths-per-item", "100", "--out", "OUT/dr14"],
                                   ["--em-candidates"]),
    "dr alpha nan": ([*DRT, "--data", "RATINGS", "--alpha", "nan", "--out", "OUT/dr15"], ["--alpha"]),
    "dr em-decay 2": ([*DRT, "--data", "RATINGS", "--em-decay", "2", "--out", "OUT/dr16"], ["--em-decay"]),
    "dr negatives -1": ([*DRT, "--data", "RATINGS", "--negatives", "-1", "--out", "OUT/dr17"], ["--negatives"]),
    "dr batch beyond data": ([*DRT[:-2], "--max-steps", "2", "--data", "RATINGS", "--batch-size", "1000000",
                              "--out", "OUT/dr18"], ["--batch-size"]),
    "dr out under a file": ([*DRT, "--data", "RATINGS", "--out", "BAD/afile/run"], ["afile"]),
    "dr resume damaged state": ([*DRT, "--data", "RATINGS", "--out", "BAD/drrun-state", "--resume"],
                                ["drrun-state", "trainer_state.json"]),
    "dr resume damaged weights": ([*DRT, "--data", "RATINGS", "--out", "BAD/drrun-weights", "--resume"],
                                  ["drrun-weights", "damaged"]),
    "dr resume damaged tensors": ([*DRT, "--data", "RATINGS", "--out", "BAD/drrun-tensors", "--resume"],
                                  ["drrun-tensors", "damaged"]),
    "dr resume changed alpha": ([*DRT, "--data", "RATINGS", "--out", "DRRUN", "--resume", "--alpha", "0.5"],
                                ["(alpha)", "--allow-config-change alpha"]),
    "dr rerun without resume": ([*DRT, "--data", "RATINGS", "--out", "DRRUN"], ["--resume"]),
    # kg-eval: KG files, ids that do not exist, numbers
    "kg-eval binary descriptions": ([*KGE, "--task", "link", "--kg", "BAD/kg-ent-binary"],
                                    ["entity2text.txt:1", "UTF-8"]),
    "kg-eval empty train split": ([*KGE, "--task", "link", "--kg", "BAD/kg-train-empty"], ["train.tsv", "no triples"]),
    "kg-eval empty test split": ([*KGE, "--task", "link", "--kg", "BAD/kg-test-empty"], ["test.tsv", "no triples"]),
    "kg-eval binary triples": ([*KGE, "--task", "link", "--kg", "BAD/kg-train-binary"], ["train.tsv:1", "UTF-8"]),
    "kg-eval unknown entity": ([*KGE, "--task", "link", "--kg", "BAD/kg-train-unknown"], ["train.tsv:15", "'zzz'"]),
    "kg-eval two columns": ([*KGE, "--task", "link", "--kg", "BAD/kg-train-2col"], ["train.tsv:15", "3 tab"]),
    "kg-eval kg is a file": ([*KGE, "--task", "link", "--kg", "BAD/afile"], ["afile"]),
    "kg-eval kg is empty": ([*KGE, "--task", "link", "--kg", "BAD/emptydir"], ["emptydir", "entity2text.txt"]),
    "kg-eval unknown split": ([*KGE, "--task", "link", "--kg", "KGDIR", "--split", "nope"], ["'nope'"]),
    "kg-eval binary categories": ([*KGE, "--task", "category", "--kg", "KGDIR", "--categories", "BAD/binary.tsv"],
                                  ["binary.tsv:1", "UTF-8"]),
    "kg-eval unknown category entity": ([*KGE, "--task", "category", "--kg", "KGDIR", "--categories",
                                         "BAD/cat-unknown.tsv"], ["cat-unknown.tsv:1", "'zzz'"]),
    "kg-eval categories folder": ([*KGE, "--task", "category", "--kg", "KGDIR", "--categories", "BAD/emptydir"],
                                  ["emptydir"]),
    "kg-eval category without categories": ([*KGE, "--task", "category", "--kg", "KGDIR"], ["--categories"]),
    "kg-eval unknown labelled relation": ([*KGE, "--task", "relation", "--kg", "KGDIR", "--labelled",
                                           "BAD/labelled-unknown.tsv"], ["labelled-unknown.tsv:1", "'_nope'"]),
    "kg-eval lr nan": ([*KGE, "--task", "link", "--kg", "KGDIR", "--lr", "nan"], ["--lr"]),
    "kg-eval lr -1": ([*KGE, "--task", "link", "--kg", "KGDIR", "--lr", "-1"], ["--lr"]),
    "kg-eval steps 0": ([*KGE, "--task", "link", "--kg", "KGDIR", "--steps", "0"], ["--steps"]),
    "kg-eval shots 0": ([*KGE, "--task", "relation", "--kg", "KGDIR", "--shots", "0"], ["--shots"]),
    "kg-eval model missing": ([*KGE, "--task", "link", "--kg", "KGDIR", "--model", "BAD/nothing"], ["nothing"]),
    # pretrain jaket
    "jaket binary triples": ([*JAK[:5], "BAD/kg-train-binary", *JAK[6:], "--out", "OUT/j1"], ["train.tsv:1", "UTF-8"]),
    "jaket empty train split": ([*JAK[:5], "BAD/kg-train-empty", *JAK[6:], "--out", "OUT/j2"], ["train.tsv"]),
    "jaket truncated text": ([*JAK, "--text", "BAD/text-trunc.jsonl", "--out", "OUT/j3"], ["text-trunc.jsonl:2"]),
    "jaket mention outside": ([*JAK, "--text", "BAD/text-outside.jsonl", "--out", "OUT/j4"],
                              ["text-outside.jsonl:1", "outside"]),
    "jaket binary text": ([*JAK, "--text", "BAD/binary.jsonl", "--out", "OUT/j5"], ["binary.jsonl:1", "UTF-8"]),
    "jaket empty categories": ([*JAK, "--categories", "BAD/cat-empty.tsv", "--out", "OUT/j6"], ["cat-empty.tsv"]),
    "jaket damaged memory cache": ([*JAK, "--memory-cache", "BAD/afile", "--out", "OUT/j7"], ["afile", "safetensors"]),
    "jaket memory cache is a folder": ([*JAK, "--memory-cache", "BAD/emptydir", "--out", "OUT/j8"], ["--memory-cache"]),
    "jaket all loss weights zero": ([*JAK, "--loss-weights", "0", "0", "0", "0", "--out", "OUT/j9"],
                                    ["--loss-weights"]),
    "jaket loss weight inf": ([*JAK, "--loss-weights", "inf", "1", "1", "1", "--out", "OUT/j10"], ["--loss-weights"]),
    "jaket km-lr inf": ([*JAK, "--km-lr", "inf", "--out", "OUT/j11"], ["--km-lr"]),
    "jaket km-heads do not divide": ([*JAK, "--km-dim", "15", "--out", "OUT/j12"], ["--km-heads"]),
    "jaket lm1-layers beyond the encoder": ([*JAK, "--lm1-layers", "100", "--out", "OUT/j13"], ["--lm1-layers"]),
    # train fid
    "fid binary data": ([*FID, "--data", "BAD/binary.jsonl", "--out", "OUT/f1"], ["binary.jsonl:1", "UTF-8"]),
    "fid latin-1 line": ([*FID, "--data", "BAD/latin1.jsonl", "--out", "OUT/f2"], ["latin1.jsonl:9", "UTF-8"]),
    "fid truncated jsonl": ([*FID, "--data", "BAD/trunc.jsonl", "--out", "OUT/f3"], ["trunc.jsonl:5"]),
    "fid missing contexts": ([*FID, "--data", "BAD/nocontexts.jsonl", "--out", "OUT/f4"], ["nocontexts.jsonl:1"]),
    "fid truncated squad": ([*FID, "--data", "BAD/squad-trunc.json", "--out", "OUT/f5"], ["squad-trunc.json"]),
    "fid squad answer_start": ([*FID, "--data", "BAD/squad-badstart.json", "--out", "OUT/f6"], ["answer_start"]),
    "fid binary squad": ([*FID, "--data", "BAD/binary.json", "--out", "OUT/f7"], ["binary.json:1", "UTF-8"]),
    "fid empty data": ([*FID, "--data", "BAD/empty.jsonl", "--out", "OUT/f8"], ["empty.jsonl", "empty"]),
    "fid data is a folder": ([*FID, "--data", "BAD/emptydir", "--out", "OUT/f9"], ["emptydir"]),
    "fid n-passages 0": ([*FID, "--data", "HOTPOT", "--n-passages", "0", "--out", "OUT/f10"], ["--n-passages"]),
    "fid num-beams huge": ([*FID, "--data", "HOTPOT", "--num-beams", "1000000", "--out", "OUT/f11"], ["--num-beams"]),
    "fid answer longer than positions": ([*FID, "--data", "HOTPOT", "--answer-max-length", "100000",
                                          "--out", "OUT/f12"],
                                         ["--answer-max-length"]),
    "fid passage longer than positions": ([*FID, "--data", "HOTPOT", "--passage-max-length", "100000", "--out",
                                           "OUT/f13"], ["--passage-max-length"]),
    "fid decoder layer missing": ([*FID, "--data", "HOTPOT", "--decoder-layers", "5", "--out", "OUT/f14"],
                                  ["--decoder-layers"]),
    "fid nothing to train on": ([*FID, "--data", "HOTPOT", "--eval-fraction", "1", "--out", "OUT/f15"],
                                ["--eval-fraction"]),
    "fid eval-fraction nan": ([*FID, "--data", "HOTPOT", "--eval-fraction", "nan", "--out", "OUT/f16"],
                              ["--eval-fraction"]),
    "fid new-lr-scale nan": ([*FID, "--data", "HOTPOT", "--new-lr-scale", "nan", "--out", "OUT/f17"],
                             ["--new-lr-scale"]),
    "fid truncated model": ([*FID, "--data", "HOTPOT", "--model", "BAD/fid-w", "--out", "OUT/f18"], ["fid-w"]),
    "fid unknown retriever": ([*FID, "--data", "HOTPOT", "--retriever", "nope", "--out", "OUT/f19"], ["'nope'"]),
    "fid out under a file": ([*FID, "--data", "HOTPOT", "--out", "BAD/afile/run"], ["afile"]),
    # score-passages
    "score ks 0": ([*SCO, "--data", "HOTPOT", "--out", "OUT/s1.jsonl", "--ks", "0"], ["--ks"]),
    "score ks -3": ([*SCO, "--data", "HOTPOT", "--out", "OUT/s2.jsonl", "--ks", "1", "-3"], ["--ks"]),
    "score candidates 0": ([*SCO, "--data", "HOTPOT", "--out", "OUT/s3.jsonl", "--candidates", "0"], ["--candidates"]),
    "score binary data": ([*SCO, "--data", "BAD/binary.jsonl", "--out", "OUT/s4.jsonl"], ["binary.jsonl:1"]),
    "score encoder is not a reader": ([*SCO, "--data", "HOTPOT", "--out", "OUT/s5.jsonl", "--reader", "MODEL"],
                                      ["not a reader"]),
    "score truncated reader": ([*SCO, "--data", "HOTPOT", "--out", "OUT/s6.jsonl", "--reader", "BAD/fid-w"], ["fid-w"]),
    "score missing reader": ([*SCO, "--data", "HOTPOT", "--out", "OUT/s7.jsonl", "--reader", "BAD/nothing"],
                             ["nothing"]),
    "score signal of another reader": ([*SCO, "--data", "HOTPOT", "--out", "OUT/s8.jsonl", "--signal", "span"],
                                       ["--signal"]),
    "score layer missing": ([*SCO, "--data", "HOTPOT", "--out", "OUT/s9.jsonl", "--layers", "99"], ["--layers"]),
    "score out is a folder": ([*SCO, "--data", "HOTPOT", "--out", "BAD/emptydir"], ["emptydir"]),
    "score out under a file": ([*SCO, "--data", "HOTPOT", "--out", "BAD/afile/x.jsonl"], ["afile"]),
    "score empty side": ([*SCO[:-1], "eval", "--eval-fraction", "0", "--data", "HOTPOT", "--out", "OUT/s10.jsonl"],
                         ["eval side"]),
    # train reader-distill
    "reader-distill binary data": ([*RDI, "--data", "BAD/binary.jsonl", "--out", "OUT/r1"], ["binary.jsonl:1"]),
    "reader-distill iterations 0": ([*RDI, "--data", "HOTPOT", "--iterations", "0", "--out", "OUT/r2"],
                                    ["--iterations"]),
    "reader-distill temperature nan": ([*RDI, "--data", "HOTPOT", "--temperature", "nan", "--out", "OUT/r3"],
                                       ["--temperature"]),
    "reader-distill sample -1": ([*RDI, "--data", "HOTPOT", "--sample", "-1", "--out", "OUT/r4"], ["--sample"]),
    "reader-distill ks 0": ([*RDI, "--data", "HOTPOT", "--ks", "0", "--out", "OUT/r5"], ["--ks"]),
    "reader-distill truncated student": ([*RDI, "--data", "HOTPOT", "--student", "BAD/fid-w", "--out", "OUT/r6"],
                                         ["fid-w"]),
    "reader-distill encoder as teacher": ([*RDI, "--data", "HOTPOT", "--reader", "MODEL", "--out", "OUT/r7"],
                                          ["not a reader"]),
    "reader-distill DR model as student": ([*RDI, "--data", "HOTPOT", "--student", "DRMODEL", "--out", "OUT/r8"],
                                           ["config.json"]),
    "reader-distill resume damaged manifest": ([*RDI, "--data", "HOTPOT", "--out", "BAD/rdrun-manifest", "--resume"],
                                               ["iter-1/manifest.json", "damaged"]),
    "reader-distill resume changed temperature": ([*RDI, "--data", "HOTPOT", "--out", "RDRUN", "--resume",
                                                   "--temperature", "2"], ["temperature"]),
    # analyze cka
    "cka truncated gzip": ([*CKA, "--model", "RESNET", "--data", "BAD/img-trunc-gz", "--out", "OUT/c1"],
                           ["img-trunc-gz", "gzip"]),
    "cka not gzip": ([*CKA, "--model", "RESNET", "--data", "BAD/img-not-gz", "--out", "OUT/c2"],
                     ["img-not-gz", "gzip"]),
    "cka truncated IDX": ([*CKA, "--model", "RESNET", "--data", "BAD/img-trunc-raw", "--out", "OUT/c3"], ["IDX"]),
    "cka truncated ResNet": ([*CKA, "--model", "BAD/ic-w", "--data", "IMAGES", "--out", "OUT/c4"],
                             ["ic-w", "safetensors"]),
    "cka ResNet config not json": ([*CKA, "--model", "BAD/ic-cfg", "--data", "IMAGES", "--out", "OUT/c5"],
                                   ["config.json"]),
    "cka text model on images": ([*CKA, "--model", "MODEL", "--data", "IMAGES", "--out", "OUT/c6"], ["images"]),
    "cka image model on text": ([*CKA, "--model", "RESNET", "--data", "BEIR", "--out", "OUT/c7"], ["IDX"]),
    "cka binary corpus": ([*CKA, "--model", "MODEL", "--data", "BAD/binary.jsonl", "--out", "OUT/c8"], ["UTF-8"]),
    "cka batch-size 1": ([*CKA, "--model", "RESNET", "--data", "IMAGES", "--batch-size", "1", "--out", "OUT/c9"],
                         ["--batch-size"]),
    "cka batch beyond data": ([*CKA[:-2], "--model", "RESNET", "--data", "IMAGES", "--batch-size", "1000000",
                               "--out", "OUT/c10"], ["--batch-size"]),
    "cka bad regex": ([*CKA, "--model", "RESNET", "--data", "IMAGES", "--layers", "[", "--out", "OUT/c11"],
                      ["--layers"]),
    "cka threshold nan": ([*CKA, "--model", "RESNET", "--data", "IMAGES", "--threshold", "nan", "--out", "OUT/c12"],
                          ["--threshold"]),
    "cka three models": ([*CKA, "--model", "RESNET", "--model", "RESNET", "--model", "RESNET", "--data", "IMAGES",
                          "--out", "OUT/c13"], ["--model"]),
    "cka image and text models": ([*CKA, "--model", "RESNET", "--model", "MODEL", "--data", "IMAGES", "--out",
                                   "OUT/c14"], ["--model"]),
    "cka DR model": ([*CKA, "--model", "DRMODEL", "--data", "IMAGES", "--out", "OUT/c15"], ["config.json"]),
    "cka out under a file": ([*CKA, "--model", "RESNET", "--data", "IMAGES", "--out", "BAD/afile/x"], ["afile"]),
    # train image-classifier
    "ic truncated gzip": ([*ICL, "--data", "BAD/img-trunc-gz", "--out", "OUT/i1"], ["img-trunc-gz", "gzip"]),
    "ic not gzip": ([*ICL, "--data", "BAD/img-not-gz", "--out", "OUT/i2"], ["gzip"]),
    "ic truncated IDX": ([*ICL, "--data", "BAD/img-trunc-raw", "--out", "OUT/i3"], ["IDX header"]),
    "ic labels cut short": ([*ICL, "--data", "BAD/img-few-labels", "--out", "OUT/i4"], ["train-labels"]),
    "ic empty folder": ([*ICL, "--data", "BAD/emptydir", "--out", "OUT/i5"], ["train-images"]),
    "ic width huge": ([*ICL, "--data", "IMAGES", "--width", "1000", "--out", "OUT/i6"], ["--width"]),
    "ic width nan": ([*ICL, "--data", "IMAGES", "--width", "nan", "--out", "OUT/i7"], ["--width"]),
    "ic depth 9": ([*ICL, "--data", "IMAGES", "--depth", "9", "--out", "OUT/i8"], ["--depth"]),
    "ic pooled to nothing": ([*ICL, "--data", "IMAGES", "--pool-input", "100", "--out", "OUT/i9"], ["--pool-input"]),
    "ic more folds than images": ([*ICL, "--data", "IMAGES", "--curriculum-ordering", "curriculum", "--score-folds",
                                   "1000", "--out", "OUT/i10"], ["--score-folds"]),
    "ic scores ignored": ([*ICL, "--data", "IMAGES", "--curriculum-scores", "BAD/scores-bad.json", "--out", "OUT/i11"],
                          ["--curriculum-scores"]),
    "ic scores not json": ([*ICL, "--data", "IMAGES", "--curriculum-ordering", "curriculum", "--curriculum-scores",
                            "BAD/scores-bad.json", "--out", "OUT/i12"], ["scores-bad.json"]),
    "ic scores binary": ([*ICL, "--data", "IMAGES", "--curriculum-ordering", "curriculum", "--curriculum-scores",
                          "BAD/binary.json", "--out", "OUT/i13"], ["binary.json:1", "UTF-8"]),
    "ic label-noise nan": ([*ICL, "--data", "IMAGES", "--label-noise", "nan", "--out", "OUT/i14"], ["--label-noise"]),
    "ic batch beyond data": ([*ICL[:-4], "--batch-size", "1000000", "--device", "cpu", "--data", "IMAGES", "--out",
                              "OUT/i15"], ["--batch-size"]),
    "ic missing test data": ([*ICL, "--data", "IMAGES", "--test-data", "BAD/emptydir", "--out", "OUT/i16"],
                             ["t10k-images"]),
    "ic resume damaged state": ([*ICL, "--data", "IMAGES", "--out", "BAD/icrun-state", "--resume"],
                                ["icrun-state", "trainer_state.json"]),
    "ic resume damaged weights": ([*ICL, "--data", "IMAGES", "--out", "BAD/icrun-weights", "--resume"],
                                  ["icrun-weights", "damaged"]),
    "ic resume damaged tensors": ([*ICL, "--data", "IMAGES", "--out", "BAD/icrun-tensors", "--resume"],
                                  ["icrun-tensors", "damaged"]),
    "ic resume changed width": ([*ICL, "--data", "IMAGES", "--out", "ICRUN", "--resume", "--width", "0.5"],
                                ["(width)", "--allow-config-change width"]),
    # pretrain mlm --loss quad
    "quad binary corpus": ([*MLM[:5], "BAD/binary.jsonl", *MLM[6:], "--out", "OUT/m1"], ["binary.jsonl", "UTF-8"]),
    "quad empty corpus": ([*MLM[:5], "BAD/empty.jsonl", *MLM[6:], "--out", "OUT/m2"], ["empty.jsonl"]),
    "quad output-embedding-size 0": ([*MLM, "--no-tie-head", "--output-embedding-size", "0", "--out", "OUT/m3"],
                                     ["--output-embedding-size"]),
    "quad output-embedding-size huge": ([*MLM, "--no-tie-head", "--output-embedding-size", "100000000", "--out",
                                         "OUT/m4"], ["--output-embedding-size"]),
    "quad mask-prob nan": ([*MLM, "--mask-prob", "nan", "--out", "OUT/m5"], ["--mask-prob"]),
    "quad probabilities above 1": ([*MLM, "--mask-prob", "0.8", "--random-prob", "0.5", "--out", "OUT/m6"],
                                   ["--random-prob"]),
    "quad span-p 0": ([*MLM, "--masking", "span", "--span-p", "0", "--out", "OUT/m7"], ["--span-p"]),
    "quad fe-copies huge": ([*MLM, "--masking", "fully-explored", "--fe-copies", "1000000", "--out", "OUT/m8"],
                            ["--fe-copies"]),
    "quad head warm-up past the run": ([*MLM, "--head-warmup-steps", "100", "--out", "OUT/m9"],
                                       ["--head-warmup-steps"]),
    "quad pmi vocab binary": ([*MLM, "--masking", "pmi", "--pmi-vocab", "BAD/pmi-binary.json", "--out", "OUT/m10"],
                              ["pmi-binary.json:1", "UTF-8"]),
    "quad pmi vocab not a vocab": ([*MLM, "--masking", "pmi", "--pmi-vocab", "BAD/pmi-not-vocab.json", "--out",
                                    "OUT/m11"], ["pmi-not-vocab.json"]),
    "quad pmi-min-count -1": ([*MLM, "--masking", "pmi", "--pmi-min-count", "-1", "--out", "OUT/m12"],
                              ["--pmi-min-count"]),
    "quad budget nan": ([*MLM, "--budget", "nan", "--out", "OUT/m13"], ["--budget"]),
    "quad DR model": ([*MLM, "--model", "DRMODEL", "--out", "OUT/m14"], ["dr/model"]),
    # index --vectors / --engine ray / --backend qdrant
    "vectors is a file": ([*IDX, "--out", "OUT/x1", "--vectors", "BAD/afile"], ["--vectors", "afile"], ("pyarrow",)),
    "vectors overlap out": ([*IDX, "--out", "OUT/x2", "--vectors", "OUT/x2"], ["--vectors", "overlap"], ("pyarrow",)),
    "vectors inside out": ([*IDX, "--out", "OUT/x3", "--vectors", "OUT/x3/shards"], ["overlap"], ("pyarrow",)),
    "vectors truncated manifest": ([*IDX, "--out", "OUT/x4", "--vectors", "BAD/vectors-manifest", "--shard-size", "10"],
                                   ["manifest.json"], ("pyarrow",)),
    "vectors truncated shard": ([*IDX, "--out", "OUT/x5", "--vectors", "BAD/vectors-shard", "--shard-size", "10"],
                                ["shard-00000.parquet"], ("pyarrow",)),
    "vectors of another job": ([*IDX, "--out", "OUT/x6", "--vectors", "VECTORS", "--shard-size", "7"],
                               ["another job", "shard size"], ("pyarrow",)),
    "vectors shard-size 0": ([*IDX, "--out", "OUT/x7", "--vectors", "OUT/x7v", "--shard-size", "0"], ["--shard-size"],
                             ("pyarrow",)),
    "ray option without ray": ([*IDX, "--out", "OUT/x8", "--num-workers", "3"], ["--num-workers", "--engine ray"]),
    "ray num-workers 0": ([*IDX, "--out", "OUT/x9", "--engine", "ray", "--num-workers", "0"], ["--num-workers"],
                          ("ray", "pyarrow")),
    "ray gpus nan": ([*IDX, "--out", "OUT/x10", "--engine", "ray", "--gpus-per-worker", "nan"], ["--gpus-per-worker"],
                     ("ray", "pyarrow")),
    "ray address unreachable": ([*IDX, "--out", "OUT/x11", "--engine", "ray", "--address", "127.0.0.1:1"],
                                ["--address", "127.0.0.1:1"], ("ray", "pyarrow")),
    "ray vectors is a file": ([*IDX, "--out", "OUT/x12", "--engine", "ray", "--vectors", "BAD/afile"], ["--vectors"],
                              ("ray", "pyarrow")),
    "qdrant option without qdrant": ([*IDX, "--out", "OUT/x13", "--collection", "c"], ["--collection"]),
    "qdrant bad collection name": ([*IDX, "--out", "OUT/x14", "--backend", "qdrant", "--collection", "a/b"],
                                   ["--collection"], ("qdrant_client",)),
    "qdrant path is a file": ([*IDX, "--out", "OUT/x15", "--backend", "qdrant", "--qdrant-path", "BAD/afile"],
                              ["--qdrant-path", "afile"], ("qdrant_client",)),
    "qdrant quantization in local mode": ([*IDX, "--out", "OUT/x16", "--backend", "qdrant", "--qdrant-path", "OUT/x16q",
                                           "--quantization", "pq"], ["--quantization"], ("qdrant_client",)),
    "qdrant upload-batch 0": ([*IDX, "--out", "OUT/x17", "--backend", "qdrant", "--upload-batch", "0"],
                              ["--upload-batch"], ("qdrant_client",)),
    "qdrant server unreachable": ([*IDX, "--out", "OUT/x18", "--backend", "qdrant", "--qdrant-url",
                                   "http://127.0.0.1:1"], ["127.0.0.1:1"], ("qdrant_client",)),
    "qdrant with a binary index": ([*IDX, "--out", "OUT/x19", "--backend", "qdrant", "--binary", "64"], ["--binary"],
                                   ("qdrant_client",)),
    # serve: startup options and input files (uvicorn.run is replaced, so nothing listens)
    "serve truncated ids": (["serve", "--index", "BAD/index-ids"], ["ids.json"], SERVE),
    "serve truncated docs": (["serve", "--index", "BAD/index-docs"], ["docs.jsonl"], SERVE),
    "serve truncated faiss": (["serve", "--index", "BAD/index-faiss"], ["index.faiss"], SERVE),
    "serve index is a file": (["serve", "--index", "BAD/afile"], ["afile"], SERVE),
    "serve index is a model": (["serve", "--index", "MODEL"], ["index"], SERVE),
    "serve port 0": ([*SRV, "--port", "0"], ["--port"], SERVE),
    "serve port 70000": ([*SRV, "--port", "70000"], ["--port"], SERVE),
    "serve max-connections 0": ([*SRV, "--max-connections", "0"], ["--max-connections"], SERVE),
    "serve batch-wait-ms inf": ([*SRV, "--batch-wait-ms", "inf"], ["--batch-wait-ms"], SERVE),
    "serve batch-wait-ms -1": ([*SRV, "--batch-wait-ms", "-1"], ["--batch-wait-ms"], SERVE),
    "serve watch-seconds nan": ([*SRV, "--watch-seconds", "nan"], ["--watch-seconds"], SERVE),
    "serve max-k 0": ([*SRV, "--max-k", "0"], ["--max-k"], SERVE),
    "serve max-body-bytes -1": ([*SRV, "--max-body-bytes", "-1"], ["--max-body-bytes"], SERVE),
    "serve bad host": ([*SRV, "--host", "not..a..host"], ["--host"], SERVE),
    "serve watch missing": ([*SRV, "--watch", "BAD/nothing"], ["--watch", "nothing"], SERVE),
    "serve watch is a file": ([*SRV, "--watch", "BAD/afile"], ["--watch", "afile"], SERVE),
    "serve encoder as reader": ([*SRV, "--reader", "MODEL"], ["not a reader"], SERVE),
    "serve missing multihop index": ([*SRV, "--multihop-index", "BAD/nothing"], ["nothing"], SERVE),
    "serve onnx model with torch": ([*SRV, "--onnx-model", "ONNXDIR"], ["--onnx-model"], SERVE),
    "serve onnx folder empty": ([*SRV, "--backend", "onnx", "--onnx-model", "BAD/emptydir"], ["emptydir"],
                                SERVE + ONNX),
    "serve onnx truncated": ([*SRV, "--backend", "onnx", "--onnx-model", "BAD/onnx-trunc"], ["model.onnx"],
                             SERVE + ONNX),
    "serve onnx without int8": ([*SRV, "--backend", "onnx-int8", "--onnx-model", "ONNXDIR"], ["int8"], SERVE + ONNX),
    # export onnx
    "onnx max-length 0": (["export", "onnx", "--model", "MODEL", "--out", "OUT/o1", "--max-length", "0"],
                          ["--max-length"], ONNX),
    "onnx max-length -1": (["export", "onnx", "--model", "MODEL", "--out", "OUT/o2", "--max-length", "-1"],
                           ["--max-length"], ONNX),
    "onnx missing model": (["export", "onnx", "--model", "BAD/nothing", "--out", "OUT/o3"], ["nothing"], ONNX),
    "onnx truncated model": (["export", "onnx", "--model", "BAD/fid-w", "--out", "OUT/o4"], ["fid-w"], ONNX),
    "onnx DR model": (["export", "onnx", "--model", "DRMODEL", "--out", "OUT/o5"], ["config.json"], ONNX),
    "onnx out is a file": (["export", "onnx", "--model", "MODEL", "--out", "BAD/afile"], ["afile"], ONNX),
    "onnx out under a file": (["export", "onnx", "--model", "MODEL", "--out", "BAD/afile/o"], ["afile"], ONNX),
}


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
    "min_rating": NUMBER, "beam": st.integers(-2, 10**9), "em_candidates": st.integers(-2, 60)}))
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
    assert math.isfinite(config.min_rating) and config.beam >= 1


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
