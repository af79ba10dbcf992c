"""No pickle anywhere: every file the project writes (models, checkpoints, indexes, runs, vocabularies, mined
negatives) is JSON, JSONL, TSV, safetensors, FAISS or .npy without objects, and no reader unpickles."""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import pytest

from reprlab.cli import main
from reprlab.demo import demo_data_path

SRC = Path(__file__).resolve().parents[1] / "src" / "reprlab"


def is_pickle(path: Path) -> bool:
    head = path.read_bytes()[:2]
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2..5
        return True
    if zipfile.is_zipfile(path):  # torch.save's zip container holds data.pkl
        with zipfile.ZipFile(path) as z:
            return any(name.endswith(".pkl") for name in z.namelist())
    return False


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_model_dir):
    """A folder holding what every writing command produces on tiny inputs."""
    root = tmp_path_factory.mktemp("written")
    from test_recipes import TINY_RATINGS, _squad

    beir, model = str(demo_data_path()), str(tiny_model_dir)
    squad = _squad(root)
    ratings = str(TINY_RATINGS)
    loop = ["--max-steps", "2", "--batch-size", "4", "--checkpoint-every", "1", "--device", "cpu"]
    commands = [
        ["index", "--corpus", beir, "--model", model, "--out", f"{root}/index"],
        ["index", "--corpus", beir, "--model", model, "--out", f"{root}/binary", "--binary", "64"],
        ["mine", "--data", beir, "--split", "test", "--out", f"{root}/mined.jsonl", "--depth", "5"],
        ["evaluate", "--data", beir, "--retriever", "bm25", "--run-out", f"{root}/run.trec"],
        ["pmi-vocab", "--corpus", beir, "--out", f"{root}/pmi.json", "--min-count", "2", "--model", "none"],
        ["train", "dpr", "--data", beir, "--split", "test", "--model", model, "--out", f"{root}/dpr",
         "--passage-max-length", "32", *loop],
        ["train", "hashing", "--data", beir, "--split", "test", "--model", model, "--out", f"{root}/hashing",
         "--passage-max-length", "32", *loop],
        ["train", "ance", "--data", beir, "--split", "test", "--model", model, "--out", f"{root}/ance", "--top-k", "10",
         "--refresh-every", "1", "--refresh-mode", "sync", "--passage-max-length", "32", *loop],
        ["pretrain", "mlm", "--corpus", beir, "--model", model, "--out", f"{root}/mlm", "--masking", "pmi",
         "--pmi-min-count", "2", "--max-length", "32", *loop],
        ["distill", "seed", "--corpus", beir, "--teacher", model, "--student", "layers:0", "--out", f"{root}/seed",
         "--max-length", "24", *loop],
        ["train", "reader", "--data", squad, "--model", model, "--out", f"{root}/reader", "--eval-fraction", "0",
         "--max-length", "64", "--stride", "16", "--max-question-length", "16", *loop],
        ["train", "reader", "--data", squad, "--model", model, "--out", f"{root}/skim", "--eval-fraction", "0",
         "--max-length", "64", "--stride", "16", "--max-question-length", "16", "--block-skim", "--block-size", "8",
         *loop],
        ["train", "deep-retrieval", "--data", ratings, "--out", f"{root}/deep-retrieval", "--width", "3",
         "--dim", "8", "--hidden", "8", "--negatives", "3", "--em-every", "1", *loop],
        ["compress", "approx", "--model", model, "--data", beir, "--out", f"{root}/approx", "--dev-fraction", "0.5",
         "--passage-max-length", "32"],
    ]
    for argv in commands:
        assert main(["-q", *argv]) == 0, argv
    return root


def test_nothing_written_is_a_pickle(written):
    files = [p for p in written.rglob("*") if p.is_file()]
    assert len(files) > 40
    suffixes = {p.suffix for p in files}
    assert not suffixes & {".pt", ".pkl", ".pickle", ".bin", ".pth"}, suffixes
    pickles = [p for p in files if is_pickle(p)]
    assert not pickles, pickles
    assert any(p.name == "trainer_state.safetensors" for p in files)  # checkpoints were written and checked


def test_no_module_unpickles():
    """No reader calls torch.load, pickle, joblib or numpy with allow_pickle=True."""
    bad = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("torch.load", "pickle.load", "pickle.loads", "joblib.load", "torch.jit.load"):
                    bad.append(f"{path.name}:{node.lineno} {name}")
                if name in ("np.load", "numpy.load") and not any(
                        k.arg == "allow_pickle" and ast.unparse(k.value) == "False" for k in node.keywords):
                    bad.append(f"{path.name}:{node.lineno} np.load without allow_pickle=False")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") for n in names):
                    bad.append(f"{path.name}:{node.lineno} imports a pickler")
    assert not bad, bad
