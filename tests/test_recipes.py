"""The recipe contract, checked on every registered recipe (reprlab.train.recipe, reprlab.recipes).

For each command in the registry: its config round-trips through its command-line options, its run
function has the contract's signature and returns a RecipeResult, ``--help`` lists every option with a
default and help, and a run stopped by ``stop_after`` and resumed ends with the weights of an
uninterrupted run. A recipe added to the registry without a tiny config here fails
``test_every_recipe_has_a_tiny_config``: write one below.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reprlab.cli import build_parser
from reprlab.cli.options import add_config_options, argv_of, config_from_args
from reprlab.demo import demo_data_path
from reprlab.errors import ConfigError
from reprlab.recipes import RECIPES
from reprlab.train.recipe import RecipeResult

TINY_KG = Path(__file__).resolve().parent / "data" / "tiny_kg"  # a 15-entity KG in the WN18RR layout
LOOP = dict(batch_size=4, lr=1e-3, log_every=1, device="cpu", warmup_steps=1)


DATA = Path(__file__).resolve().parent / "data"
TINY_HOTPOT = DATA / "tiny_hotpot.jsonl"  # 8 two-hop questions (both layouts' fields)
TINY_RATINGS = DATA / "tiny_ratings"  # MovieLens layout: 10 users x 8 ratings of 12 items


def _sentences(tmp: Path) -> str:
    path = tmp / "sentences.jsonl"
    rows = [{"sentences": [f"Sentence {i} is about topic {i % 3}.", f"It follows sentence {i}.",
                           f"Then comes the end of paragraph {i}."]} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _squad(tmp: Path) -> str:
    contexts = ["Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title.",
                "The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.",
                "Beyonce headlined the halftime show, with Coldplay and Bruno Mars as special guests.",
                "The Panthers defense gave up just 308 points, ranking sixth in the league."]
    answers = ["Denver Broncos", "Levi's Stadium", "Beyonce", "308"]
    paragraphs = [{"context": c, "qas": [{"id": f"q{i}", "question": f"Question {i} about the game?",
                                          "answers": [{"text": a, "answer_start": c.index(a)}]}]}
                  for i, (c, a) in enumerate(zip(contexts, answers))]
    path = tmp / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": paragraphs}]}))
    return str(path)


def _images(tmp: Path, n: int = 64) -> str:
    """A tiny IDX folder of random 28 x 28 training images, 10 classes."""
    import gzip

    import numpy as np

    rng = np.random.default_rng(0)
    folder = tmp / "images"
    folder.mkdir(exist_ok=True)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    labels = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(i % 10 for i in range(n))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return str(folder)


def tiny_configs(tmp: Path, model: Path) -> dict:
    """command -> (keyword arguments of a tiny config without output_dir and loop settings)."""
    from reprlab.qa.long_reader import LongReaderConfig
    from reprlab.qa.reader import ReaderConfig
    from reprlab.train.curriculum import CurriculumConfig

    from reprlab.qa.fid import FidConfig, FidReader

    demo = str(demo_data_path())
    fid = FidConfig(passage_max_length=32, answer_max_length=4)
    teacher = tmp / "fid-teacher"
    if not teacher.is_dir():  # a fixed tiny FiD reader for reader distillation
        torch.manual_seed(0)
        FidReader.from_encoder(model, fid).save_pretrained(teacher)
    reader = ReaderConfig(max_length=64, stride=16, max_question_length=16)
    long_reader = LongReaderConfig(attention="cluster-former", cluster_layers=[1], max_positions=1024, window=32,
                                   stride=16, num_clusters=4, memory_size=256, memory_per_step=64, refresh_every=2,
                                   max_question_length=16)
    return {
        "train mdr": dict(data=str(TINY_HOTPOT), model=str(model), eval_fraction=0.0, num_negatives=1,
                          negative_sources=("distractors",), max_question_length=16, max_query_length=32,
                          max_passage_length=32, evaluate=False),
        "train reader": dict(data=[_squad(tmp)], model=str(model), eval_fraction=0.0, reader=reader),
        "train long-reader": dict(data=str(TINY_HOTPOT), model=str(model), eval_fraction=0.0, reader=long_reader,
                                  calibration_examples=2, evaluate=False),
        "train fid": dict(data=[str(TINY_HOTPOT)], model=str(model), n_passages=2, eval_passages=2, evaluate="none",
                          fid=fid),
        "train reader-distill": dict(data=str(TINY_HOTPOT), reader=str(teacher), student=str(model), iterations=2,
                                     candidates=3, sample=2, eval_fraction=0.0, evaluate=False, query_max_length=16,
                                     passage_max_length=32),
        "train dpr": dict(data=demo, split="test", model=str(model), num_negatives=1, mine_depth=5,
                          query_max_length=16, passage_max_length=32),
        "train hashing": dict(data=demo, split="test", model=str(model), num_negatives=1, mine_depth=5,
                              query_max_length=16, passage_max_length=32),
        "train ance": dict(data=demo, split="test", model=str(model), refresh_every=2, top_k=10,
                           query_max_length=16, passage_max_length=32, dev_fraction=0.0, refresh_mode="sync"),
        "pretrain mlm": dict(corpus=[demo], model=str(model), max_length=32),
        "pretrain jaket": dict(kg=str(TINY_KG), categories=str(TINY_KG / "categories.tsv"), model=str(model),
                               lm1_layers=1, km_dim=16, km_heads=2, max_length=32, memory_refresh_every=2),
        "pretrain cmlm": dict(corpus=[_sentences(tmp)], model=str(model), num_vectors=2, max_length=16),
        "distill kd": dict(corpus=[demo], teacher=str(model), student="layers:0", max_length=24),
        "distill ckd": dict(corpus=[demo], teacher=str(model), student="layers:0", max_length=24),
        "distill seed": dict(corpus=[demo], teacher=str(model), student="layers:0", max_length=24),
        "train deep-retrieval": dict(data=str(TINY_RATINGS), depth=2, width=3, paths_per_item=2, dim=8, hidden=8,
                                     node_dim=4, history_length=4, negatives=3, em_every=1, em_beam=3,
                                     em_candidates=3, alpha=0.01, evaluate=False),
        "train image-classifier": dict(data=_images(tmp), depth=8, width=0.25, label_noise=0.2, score_folds=2,
                                       score_steps=2, curriculum=CurriculumConfig(ordering="curriculum", pacing="root",
                                                                                  pacing_a=0.5, pacing_b=0.25)),
        "compress approx": dict(model=str(model), data=demo, split="train", dev_fraction=0.5, negatives=1,
                                query_max_length=16, passage_max_length=32),
    }


def build(recipe, tmp: Path, model: Path, out: str, **loop):
    kwargs = dict(tiny_configs(tmp, model)[recipe.command])
    if "train" in {f for f in recipe.config.__dataclass_fields__}:
        kwargs.update({**LOOP, **loop})
    return recipe.make_config(output_dir=out, **kwargs)


@pytest.fixture(scope="module")
def commands():
    return sorted(RECIPES)


def test_every_recipe_has_a_tiny_config(tmp_path, tiny_model_dir, commands):
    missing = set(commands) - set(tiny_configs(tmp_path, tiny_model_dir))
    assert not missing, f"recipes without a tiny config in tests/test_recipes.py: {sorted(missing)}"


@pytest.mark.parametrize("command", sorted(RECIPES))
def test_run_function_and_result_follow_the_contract(command):
    recipe = RECIPES[command]
    params = inspect.signature(recipe.run).parameters
    assert list(params)[:3] == ["config", "callbacks", "stop_after"], command
    assert params["callbacks"].default == () and params["stop_after"].default is None
    hint = inspect.signature(recipe.run).return_annotation
    result_cls = recipe.run.__globals__[hint] if isinstance(hint, str) else hint
    assert issubclass(result_cls, RecipeResult), command


@pytest.mark.parametrize("command", sorted(RECIPES))
def test_config_round_trips_through_the_command_line(command, tmp_path, tiny_model_dir):
    recipe = RECIPES[command]
    config = build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "out"), max_steps=3, seed=7)
    parser = argparse.ArgumentParser()
    options = add_config_options(parser, recipe.config, hidden=recipe.hidden, fixed=recipe.fixed)
    again = config_from_args(options, parser.parse_args(argv_of(options, config)))
    assert again == config


@pytest.mark.parametrize("command", sorted(RECIPES))
def test_help_lists_every_option_with_its_default_and_help(command, capsys):
    group, name = command.split()
    with pytest.raises(SystemExit):
        build_parser().parse_args([group, name, "--help"])
    out = capsys.readouterr().out
    options = [line.strip() for line in out.split("options:", 1)[1].splitlines() if line.strip().startswith("--")]
    assert options, out
    text = " ".join(out.split())
    for flag in ("--out", "--lr", "--max-steps", "--resume") if "train" in RECIPES[command].config.__dataclass_fields__ \
            else ("--out",):
        assert flag in text
    assert text.count("(default:") + text.count("(required)") >= len(options) - 1  # --help itself has none


def test_a_bad_value_names_the_flag(tmp_path, capsys):
    from reprlab.cli import main

    code = main(["-q", "train", "dpr", "--data", str(demo_data_path()), "--out", str(tmp_path / "x"), "--lr", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "--lr" in err and "positive" in err, err
    with pytest.raises(ConfigError, match="lr"):
        RECIPES["train dpr"].make_config(output_dir="x", data="d", lr=-1)


def _weights(result) -> dict[str, torch.Tensor]:
    files = sorted(Path(result.model_dir).rglob("*.safetensors"))
    assert files, result.model_dir
    return {f"{f.relative_to(result.model_dir)}:{k}": v for f in files for k, v in load_file(f).items()}


@pytest.mark.parametrize("command", sorted(RECIPES))
def test_stopped_and_resumed_run_equals_an_uninterrupted_one(command, tmp_path, tiny_model_dir):
    recipe = RECIPES[command]
    if "train" not in recipe.config.__dataclass_fields__:  # no training loop: a rerun gives the same model
        a = recipe.run(build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "a")))
        b = recipe.run(build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "b")))
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        return
    loop = dict(max_steps=4, checkpoint_every=2)
    full = recipe.run(build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "full"), **loop))
    cut = recipe.run(build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "cut"), **loop), stop_after=3)
    assert cut.model_dir is None and cut.steps == 3
    resumed = recipe.run(build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "cut"), resume=True, **loop))
    assert resumed.steps == full.steps == 4
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_worked_example_of_the_architecture_doc_runs_from_the_command_line(tmp_path, tiny_model_dir, capsys):
    """docs/ARCHITECTURE.md's toy recipe, registered, appears in the CLI and trains, stops and resumes."""
    import importlib.util
    import re

    from reprlab.cli import main
    from reprlab.train import recipe as contract

    doc = (Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    code = re.search(r"```python\n(# src/reprlab/analysis/toy.py.*?)```", doc, re.S).group(1)
    (tmp_path / "toy.py").write_text(code)
    (tmp_path / "pos.txt").write_text("".join(f"a cat sat on mat {i}\n" for i in range(6)))
    (tmp_path / "neg.txt").write_text("".join(f"stocks fell in trading {i}\n" for i in range(6)))
    spec = importlib.util.spec_from_file_location("reprlab_doc_toy", tmp_path / "toy.py")
    try:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        assert "train toy" in contract.RECIPES
        argv = ["-q", "train", "toy", "--positives", str(tmp_path / "pos.txt"), "--negatives", str(tmp_path / "neg.txt"),
                "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--max-steps", "4", "--batch-size", "4",
                "--checkpoint-every", "2", "--device", "cpu"]
        assert main(argv) == 0
        assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "toy", "--help"])
        assert "--margin" in capsys.readouterr().out
        assert main([*argv, "--margin", "3"]) == 2 and "--margin: must be in (0, 2)" in capsys.readouterr().err
    finally:
        contract.RECIPES.pop("train toy", None)


KILLER = """
import json, os, signal, sys
import torch
from reprlab.recipes import RECIPES

torch.set_num_threads(int(sys.argv[4]))  # the test process's thread count: the same sums in the same order

class KillAt:  # kill -9 of this very process right after step k: no cleanup, no atexit, no flush
    def __init__(self, k):
        self.k = k

    def on_step_end(self, state, model, metrics):
        if state.step == self.k:
            os.kill(os.getpid(), signal.SIGKILL)

recipe = RECIPES[sys.argv[1]]
config = recipe.config.from_dict(json.loads(sys.argv[2]))
recipe.run(config, callbacks=[KillAt(int(sys.argv[3]))])
"""


@pytest.mark.parametrize("command", sorted(c for c in RECIPES if "train" in RECIPES[c].config.__dataclass_fields__))
def test_kill_9_then_resume_equals_an_uninterrupted_run(command, tmp_path, tiny_model_dir):
    import subprocess
    import sys

    recipe = RECIPES[command]
    loop = dict(max_steps=4, checkpoint_every=2)
    full = recipe.run(build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "full"), **loop))
    cut = build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "cut"), **loop)
    proc = subprocess.run([sys.executable, "-c", KILLER, command, json.dumps(cut.to_dict()), "3",
                           str(torch.get_num_threads())],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (tmp_path / "cut" / "model").exists()
    resumed = recipe.run(build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "cut"), resume=True, **loop))
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_differences_names_what_a_reused_run_was_trained_with(tmp_path, tiny_model_dir):
    from reprlab.train.recipe import run_differences

    recipe = RECIPES["train dpr"]
    config = build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "run"), max_steps=2)
    recipe.run(config)
    assert run_differences(config) == []
    other = build(recipe, tmp_path, tiny_model_dir, str(tmp_path / "run"), max_steps=2, lr=0.5)
    assert run_differences(other) == ["train.lr"]
    assert run_differences(other, allowed=("lr",)) == []
    changed = recipe.make_config(**{**config.to_dict(), "num_negatives": 2})
    assert run_differences(changed) == ["num_negatives"]
    with pytest.raises(ConfigError, match="train_config.json"):
        run_differences(config, tmp_path / "nowhere")
