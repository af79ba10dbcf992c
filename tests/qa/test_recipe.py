"""The reader recipes on the recipe contract: one ``train reader`` (plain or Block Skim), ``train long-reader``,
their configs (help on every option, loop defaults, validation naming the field), HotpotQA questions left out
said and recorded, and ``load_reader`` opening each kind of reader folder."""

import dataclasses
import json
import logging
import typing

import pytest

from reprlab.errors import ConfigError, ModelLoadError
from reprlab.qa.block_skim import BlockSkimConfig, BlockSkimReader
from reprlab.qa.long_reader import LongReaderTrainingConfig, run_long_reader_training
from reprlab.qa.reader import Reader, ReaderConfig, load_reader
from reprlab.qa.recipe import ReaderTrainingConfig, ReaderTrainingResult, run_reader
from reprlab.train.loop import TrainConfig
from reprlab.train.recipe import RECIPES, RecipeResult

from .conftest import write_squad

READER = ReaderConfig(max_length=64, stride=16, max_question_length=16)


def option_fields(cls, path=""):
    """(dotted name, field) of every option of a config, nested configs included (the loop's excepted)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "train":
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            yield from option_fields(hints[f.name], f"{path}{f.name}.")
        else:
            yield path + f.name, f


@pytest.mark.parametrize("command, config, loop_defaults", [
    ("train reader", ReaderTrainingConfig, dict(epochs=2.0, batch_size=16, lr=1e-4)),
    ("train long-reader", LongReaderTrainingConfig, dict(epochs=1.0, batch_size=4, grad_accum=4, lr=5e-5)),
])
def test_recipes_are_registered_with_documented_options(command, config, loop_defaults):
    recipe = RECIPES[command]
    assert recipe.config is config
    names = dict(option_fields(config))
    missing = sorted(n for n, f in names.items() if not f.metadata.get("help"))
    assert not missing, f"options without help: {missing}"
    assert names["output_dir"].metadata["flag"] == "--out"
    loop = dataclasses.fields(config)[-1]
    assert loop.name == "train" and loop.metadata["loop_defaults"] == loop_defaults
    made = config(output_dir="o", data=["x.json"] if config is ReaderTrainingConfig else "x.jsonl", max_steps=7)
    assert made.train.max_steps == 7 and made.train == TrainConfig(**{**loop_defaults, "max_steps": 7})
    assert type(made).from_dict(made.to_dict()) == made


def test_reader_options_keep_their_flags():
    names = dict(option_fields(ReaderTrainingConfig))
    assert names["reader.batch_size"].metadata["flag"] == "--eval-batch-size"  # --batch-size is the loop's
    assert {n.split(".")[-1] for n in names if n.startswith("skim.")} == {
        f.name for f in dataclasses.fields(BlockSkimConfig)}  # Block Skim's options, flattened


def test_block_skim_options_need_block_skim(tmp_path):
    with pytest.raises(ConfigError, match="need --block-skim") as err:
        ReaderTrainingConfig(output_dir="o", data=["x.json"], skim=BlockSkimConfig(threshold=0.2))
    assert err.value.field == "skim.threshold"
    assert ReaderTrainingConfig(output_dir="o", data=["x.json"], block_skim=True,
                                skim={"threshold": 0.2}).skim.threshold == 0.2
    with pytest.raises(ConfigError) as err:
        ReaderTrainingConfig(output_dir="o", data=["x.json"], eval_fraction=1.5)
    assert err.value.field == "eval_fraction"
    with pytest.raises(ConfigError) as err:
        ReaderTrainingConfig(output_dir="o", data=[])
    assert err.value.field == "data"


def test_one_train_reader_recipe_dispatches_to_block_skim(tiny_encoder_dir, tmp_path):
    data = write_squad(tmp_path / "train.json")

    def run(name, **kw):
        config = ReaderTrainingConfig(output_dir=str(tmp_path / name), data=[str(data)], model=str(tiny_encoder_dir),
                                      eval_fraction=0.0, reader=READER, max_steps=2, batch_size=2, device="cpu", **kw)
        return run_reader(config)

    plain = run("plain")
    skim = run("skim", block_skim=True, skim=BlockSkimConfig(block_size=8, skim_layers=[0]))
    assert isinstance(plain, ReaderTrainingResult) and isinstance(plain, RecipeResult)
    assert not (plain.model_dir / "block_skim.json").exists() and (skim.model_dir / "block_skim.json").is_file()
    assert plain.steps == skim.steps == 2 and len(plain.metrics) >= 1 and "skim_loss" in skim.metrics[-1]
    assert plain.summary().startswith("reader: 4 examples") and str(plain.model_dir) in plain.summary()
    recorded = json.loads((tmp_path / "skim" / "train_config.json").read_text())["extra"]
    assert recorded["recipe"] == "reader" and recorded["config"]["block_skim"] is True
    assert recorded["data"] == [str(data)] and recorded["eval_fraction"] == 0.0
    # load_reader opens each folder as its kind; an encoder folder is not a reader
    assert type(load_reader(plain.model_dir)) is Reader
    loaded = load_reader(skim.model_dir)
    assert isinstance(loaded, BlockSkimReader) and loaded.skim_config.skim_layers == [0] and not loaded.training
    with pytest.raises(ModelLoadError, match="not a reader"):
        load_reader(tiny_encoder_dir)


def test_hotpotqa_questions_left_out_are_said_and_recorded(tiny_encoder_dir, tmp_path, caplog):
    def record(qid, answer, supporting):
        return {"question_id": qid, "question_text": f"Where did person {qid} live?",
                "answers_objects": [{"spans": [answer]}],
                "contexts": [{"title": f"P{qid}", "paragraph_text": f"Person {qid} lived in Paris.",
                              "is_supporting": supporting}]}
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        record("1", "Paris", True), record("2", "Paris", True), record("3", "Paris", False), record("4", "yes", True)]))
    config = ReaderTrainingConfig(output_dir=str(tmp_path / "run"), data=[str(path)], model=str(tiny_encoder_dir),
                                  eval_fraction=0.0, reader=READER, max_steps=1, batch_size=2, device="cpu")
    with caplog.at_level(logging.INFO, logger="reprlab"):
        result = run_reader(config)
    want = {str(path): {"yes/no": 1, "no supporting paragraph": 1, "not found": 0}}
    assert result.train_examples == 2 and result.skipped == want
    assert json.loads((tmp_path / "run" / "split.json").read_text())["skipped"] == want
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "h.jsonl" in r.getMessage()]
    assert len(warned) == 1 and "1 without a supporting paragraph" in warned[0]
    # the same file in the distractor setting: a question without supporting facts is still read
    all_result = run_reader(dataclasses.replace(config, output_dir=str(tmp_path / "all"), hotpotqa_contexts="all"))
    assert all_result.train_examples == 3 and all_result.skipped == {str(path): {"yes/no": 1, "not found": 0}}


def test_long_reader_result_on_the_contract(tiny_encoder_dir, tmp_path):
    from .test_long_reader import small_config, write_hotpot

    config = LongReaderTrainingConfig(output_dir=str(tmp_path / "long"), data=str(write_hotpot(tmp_path / "h.jsonl")),
                                      model=str(tiny_encoder_dir), reader=small_config(), eval_fraction=0.0,
                                      calibration_examples=1, max_steps=1, batch_size=1, grad_accum=1, device="cpu",
                                      evaluate=False)
    result = RECIPES["train long-reader"].run(config)
    assert result.steps == 1 and result.model_dir.is_dir() and result.skipped == {"yes/no": 1, "not found": 0}
    assert result.summary().startswith("long reader: 8 questions")
    assert json.loads((tmp_path / "long" / "train_config.json").read_text())["extra"]["recipe"] == "long-reader"
    with pytest.raises(ConfigError) as err:
        LongReaderTrainingConfig(output_dir="o", data="h.jsonl", max_train_examples=0)
    assert err.value.field == "max_train_examples"
