"""Block Skim: equal to the plain reader when nothing is skipped, really shorter when skipping, the
physical removal equal to the masked reference, the block bookkeeping, joint training and persistence."""

import json

import pytest
import torch
from safetensors.torch import load_file

from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError
from reprlab.qa.block_skim import (
    BlockSkimConfig,
    BlockSkimReader,
    block_labels,
    context_blocks,
    diagonal_blocks,
    question_attention,
)
from reprlab.qa.reader import Reader, ReaderConfig
from reprlab.qa.recipe import ReaderTrainingConfig, run_block_skim_training
from reprlab.qa.squad import load_squad
from reprlab.qa.training import collate_features, reader_optimizer
from reprlab.text.tokenizer import Tokenizer

from .conftest import CONTEXTS, QAS, write_squad

LONG = " ".join(f"Part {i} says that box{i} holds {7 * i} red marbles and nothing else." for i in range(12))
READER = ReaderConfig(max_length=96, stride=24, max_question_length=16, max_answer_length=10)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_pretrained("minilm")


FEATURES = ["diagonal", "diagonal+question"]


def make_reader(tokenizer, skim_layers=(0, 1), threshold=0.5, num_layers=3, seed=0, features="diagonal"):
    torch.manual_seed(seed)
    enc = Encoder(EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=512, num_layers=num_layers,
                                     hidden_dropout=0.0, attention_dropout=0.0))
    skim = BlockSkimConfig(block_size=8, skim_layers=list(skim_layers), threshold=threshold, features=features)
    return BlockSkimReader(enc, tokenizer, READER, skim).eval()


def median_threshold(reader, batch):
    """A threshold between the keep probabilities of the first skim layer, so that it splits the blocks."""
    probs = run(reader, batch, threshold=0.0).keep_probs[0]
    exists = (context_blocks(batch.sequence_ids == 1, 8)[1] >= 0).any(-1)
    return float(probs[exists].median()) + 1e-7


def windows(reader):
    questions = [q for q, _ in QAS] + ["How many marbles are in box5?"]
    batch = reader.featurize(questions, CONTEXTS + [LONG])
    assert batch.input_ids.shape[0] > len(questions), "the long context is cut into windows"
    assert (batch.attention_mask.sum(1) < batch.input_ids.shape[1]).any(), "the batch has padding"
    return batch


def run(reader, batch, **kw):
    with torch.no_grad():
        return reader.skim_forward(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                                   batch.sequence_ids == 1, **kw)


def test_context_blocks_and_labels_by_hand():
    ctx = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    block_of, block_pos = context_blocks(ctx, 2)
    assert block_of.tolist() == [[-1, -1, 0, 0, 1, 1, 2, -1, -1], [-1, 0, 0, -1, -1, -1, -1, -1, -1]]
    assert block_pos.tolist() == [[[2, 3], [4, 5], [6, -1]], [[1, 2], [-1, -1], [-1, -1]]]
    labels = block_labels(block_pos, torch.tensor([5, 0]), torch.tensor([6, 0]))
    assert labels.tolist() == [[0, 1, 1], [0, -100, -100]]  # answer tokens 5..6; row 2: answer not in window
    labels = block_labels(block_pos, torch.tensor([3, 2]), torch.tensor([3, 2]))
    assert labels.tolist() == [[1, 0, 0], [1, -100, -100]]


def test_context_blocks_at_the_edges():
    """A context that runs to the last column with a partial last block; one that stops before a non-context last
    column; no context at all (no blocks)."""
    ctx = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    block_of, block_pos = context_blocks(ctx, 2)
    assert block_of.tolist() == [[-1, 0, 0, 1], [-1, 0, 0, -1]]
    assert block_pos.tolist() == [[[1, 2], [3, -1]], [[1, 2], [-1, -1]]]
    _, block_pos = context_blocks(torch.tensor([[0, 1, 1, 1, 0]], dtype=torch.bool), 2)
    assert block_pos.tolist() == [[[1, 2], [3, -1]]]
    block_of, block_pos = context_blocks(torch.zeros(2, 5, dtype=torch.bool), 4)
    assert block_pos.shape == (2, 0, 4) and (block_of == -1).all()


def test_the_predictor_input_is_the_attention_definition_after_removal(tokenizer):
    """What each skim predictor reads: for every block, the (heads, bs, bs) attention among its tokens times the
    number of real keys, and (diagonal+question) the question features of its tokens; a block whose tokens an
    earlier layer removed reads zeros. Checked against a plain loop, before and after removing block 0."""
    reader = make_reader(tokenizer, skim_layers=(0,), features="diagonal+question")
    seen = []

    class Capture(torch.nn.Module):
        def forward(self, blocks, question=None):
            seen.append((blocks, question))
            return blocks.new_zeros(blocks.shape[0], 2)

    reader.predictors["0"] = Capture()
    T, bs, g = 20, 8, torch.Generator().manual_seed(0)
    ctx = torch.zeros(1, T, dtype=torch.bool)
    ctx[0, 3:19] = True  # two blocks of 8: positions 3..10 and 11..18
    block_of, block_pos = context_blocks(ctx, bs)
    for pos in (torch.arange(T)[None], torch.tensor([[0, 1, 2, *range(11, 20)]])):  # all columns; block 0 removed
        Tc = pos.shape[1]
        weights = torch.rand(1, 2, Tc, Tc, generator=g).softmax(-1)  # (B, nh, Tc, Tc)
        mask = torch.ones(1, Tc, dtype=torch.bool)
        seen.clear()
        reader._block_logits(0, weights, pos, mask, block_of, block_pos, T)
        (blocks, question), = seen  # blocks (nb, nh, bs, bs), question (nb, nh, 2, bs)
        column = {int(p): c for c, p in enumerate(pos[0])}
        is_question = torch.tensor([[int(p) not in range(3, 19) for p in pos[0]]])
        feats = question_attention(weights, is_question, torch.tensor([float(Tc)]))[0]  # (nh, 2, Tc)
        for b in range(2):
            cols = [column.get(int(p)) for p in block_pos[0, b]]
            for i, ci in enumerate(cols):
                want_q = feats[:, :, ci] if ci is not None else torch.zeros(2, 2)
                torch.testing.assert_close(question[b, :, :, i], want_q)
                for j, cj in enumerate(cols):
                    want = weights[0, :, ci, cj] * Tc if ci is not None and cj is not None else torch.zeros(2)
                    torch.testing.assert_close(blocks[b, :, i, j], want)
        assert (blocks[0] == 0).all() == (Tc < T), "the removed block reads zeros"


def test_diagonal_blocks_equal_a_loop():
    g = torch.Generator().manual_seed(0)
    B, nh, T, bs = 2, 3, 11, 4
    w = torch.rand(B, nh, T, T, generator=g)
    index = torch.tensor([[[1, 2, 3, 4], [5, 6, -1, -1]], [[0, 2, 4, 6], [-1, -1, -1, -1]]])
    got = diagonal_blocks(w, index)
    assert got.shape == (B, 2, nh, bs, bs)
    for b in range(B):
        for j in range(2):
            for r in range(bs):
                for c in range(bs):
                    i1, i2 = int(index[b, j, r]), int(index[b, j, c])
                    want = w[b, :, i1, i2] if i1 >= 0 and i2 >= 0 else torch.zeros(nh)
                    assert torch.equal(got[b, j, :, r, c], want)


def test_question_attention_equals_its_definition():
    g = torch.Generator().manual_seed(1)
    B, nh, T = 2, 3, 9
    w = torch.rand(B, nh, T, T, generator=g).softmax(-1)
    question = torch.zeros(B, T, dtype=torch.bool)
    question[0, 1:4] = True
    question[1, 1:2] = True
    n_keys = torch.tensor([9.0, 6.0])
    got = question_attention(w, question, n_keys)  # (B, nh, 2, T)
    assert got.shape == (B, nh, 2, T)
    for b in range(B):
        rows = question[b].nonzero().flatten()
        for h in range(nh):
            received = w[b, h][rows].mean(0) * n_keys[b]  # mean attention the question rows give each token
            sent = w[b, h][:, rows].sum(1)  # attention mass each token gives the question columns
            torch.testing.assert_close(got[b, h, 0], received)
            torch.testing.assert_close(got[b, h, 1], sent)


@pytest.mark.parametrize("features", FEATURES)
def test_threshold_zero_equals_the_plain_reader(tokenizer, tmp_path, features):
    reader = make_reader(tokenizer, threshold=0.0, features=features)
    batch = windows(reader)
    real = batch.attention_mask.bool()
    skim = run(reader, batch)
    with torch.no_grad():
        plain = Reader.forward(reader, batch.input_ids, batch.attention_mask, batch.token_type_ids)
    torch.testing.assert_close(skim.start_logits[real], plain.start_logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(skim.end_logits[real], plain.end_logits[real], atol=1e-5, rtol=0)
    assert skim.layer_lengths == [batch.input_ids.shape[1]] * 3, "nothing was removed"

    reader.save_pretrained(tmp_path / "bs")
    plain_reader = Reader.from_pretrained(tmp_path / "bs").eval()
    assert type(plain_reader) is Reader
    for (question, _), context in zip(QAS + [("How many marbles are in box5?", "")], CONTEXTS + [LONG]):
        a = reader.answer(question, context, top_k=5)
        b = plain_reader.answer(question, context, top_k=5)
        assert [(x.text, x.start, x.end) for x in a] == [(x.text, x.start, x.end) for x in b]
        torch.testing.assert_close(torch.tensor([x.score for x in a]), torch.tensor([x.score for x in b]),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("features", FEATURES)
def test_skipping_really_shortens_the_sequence(tokenizer, features):
    reader = make_reader(tokenizer, skim_layers=(0,), features=features)
    batch = reader.featurize(["How many marbles are in box5?"], [LONG])
    one = type(batch)(**{k: (v[:1] if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()})
    reader.skim_config.threshold = median_threshold(reader, one)
    out = run(reader, one)
    T = one.input_ids.shape[1]
    kept = torch.isfinite(out.start_logits[0])
    question = int(((one.sequence_ids[0] != 1) & one.attention_mask[0].bool()).sum())
    assert out.layer_lengths[0] == T
    assert question < out.layer_lengths[1] < T, "some context blocks were dropped, some kept"
    assert out.layer_lengths[1] == out.layer_lengths[2] == int(kept.sum())
    assert kept[one.sequence_ids[0] == 0].all() and kept[0], "question and [CLS] are always kept"
    dropped = ~kept & (one.sequence_ids[0] == 1)
    assert dropped.any() and torch.isinf(out.end_logits[0][dropped]).all()

    everything = run(reader, one, threshold=1.0)  # P(keep) < 1 everywhere: only question and specials stay
    assert everything.layer_lengths[1] == question
    answers = reader.answer("How many marbles are in box5?", LONG, top_k=3)
    for a in answers:
        assert LONG[a.start:a.end] == a.text


class TablePredictor(torch.nn.Module):
    """Keep/skip logits from a fixed (B, nb) table; records the attention blocks it was shown."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.seen = []

    def forward(self, blocks, question=None):
        self.seen.append((blocks.clone(), None if question is None else question.clone()))
        keep = self.table.flatten()
        return torch.stack([torch.zeros_like(keep), keep], dim=-1)


@pytest.mark.parametrize("features", FEATURES)
def test_a_context_of_one_block_is_skimmed_too(tokenizer, features):
    reader = make_reader(tokenizer, skim_layers=(0,), threshold=0.5, features=features)
    batch = reader.featurize(["Who has marbles?"], ["Tom has red marbles."])
    context = batch.sequence_ids == 1
    assert batch.input_ids.shape[0] == 1 and context_blocks(context, 8)[1].shape[1] == 1, "one window, one block"
    T = batch.input_ids.shape[1]
    question = int(((batch.sequence_ids[0] != 1) & batch.attention_mask[0].bool()).sum())
    reader.predictors["0"] = TablePredictor(torch.full((1, 1), -50.0))  # P(keep) ~ 0: skip the block
    fast, ref = run(reader, batch), run(reader, batch, physical=False)
    assert fast.layer_lengths[:2] == [T, question], "the only block was removed after layer 0"
    assert torch.isinf(fast.start_logits[context]).all() and torch.isfinite(fast.start_logits[~context & (
        batch.attention_mask == 1)]).all()
    assert torch.equal(torch.isfinite(fast.start_logits), torch.isfinite(ref.start_logits))
    reader.predictors["0"].table = torch.full((1, 1), 50.0)  # P(keep) ~ 1: nothing removed
    assert run(reader, batch).layer_lengths[1] == T
    reader.predictors["0"].table = torch.zeros(1, 1)  # P(keep) = 0.5 exactly, the threshold: kept ("skip when <")
    assert run(reader, batch).layer_lengths[1] == T

@pytest.mark.parametrize("features", FEATURES)
def test_physical_removal_equals_the_masked_reference(tokenizer, features):
    reader = make_reader(tokenizer, skim_layers=(0, 1), threshold=0.5, features=features)
    batch = windows(reader)
    context = batch.sequence_ids == 1
    nb = context_blocks(context, 8)[1].shape[1]
    g = torch.Generator().manual_seed(3)
    for name in ("0", "1"):  # random keep/skip decisions per (window, block) at each skim layer
        reader.predictors[name] = TablePredictor(torch.randn(batch.input_ids.shape[0], nb, generator=g) * 5)
    fast = run(reader, batch)
    fast_blocks = [p.seen[-1] for p in reader.predictors.values()]
    ref = run(reader, batch, physical=False)
    ref_blocks = [p.seen[-1] for p in reader.predictors.values()]
    assert fast.layer_lengths[2] <= fast.layer_lengths[1] < fast.layer_lengths[0]
    assert ref.layer_lengths == [batch.input_ids.shape[1]] * 3
    table = reader.predictors["1"].table
    reader.predictors["1"].table = torch.full_like(table, 50.0)  # layer 1 keeps everything
    only_first = run(reader, batch)
    reader.predictors["1"].table = table
    count = lambda out: int(torch.isfinite(out.start_logits).sum())  # noqa: E731
    assert count(fast) < count(only_first) < int(batch.attention_mask.sum()), "both skim layers removed tokens"
    for (a, qa), (b, qb) in zip(fast_blocks, ref_blocks):  # the predictors saw the same inputs after the removal
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        assert (qa is None) == (qb is None) == (features == "diagonal")
        if qa is not None:
            torch.testing.assert_close(qa, qb, atol=1e-5, rtol=0)
            assert qa.shape == (a.shape[0], a.shape[1], 2, a.shape[-1]) and qa.abs().sum() > 0
    assert fast_blocks[1][0].abs().sum() > 0
    finite = torch.isfinite(ref.start_logits)
    assert torch.equal(finite, torch.isfinite(fast.start_logits))
    assert (~finite & context).any() and (finite & context).any()
    assert finite[batch.sequence_ids == 0].all(), "question tokens are never removed"
    torch.testing.assert_close(fast.start_logits[finite], ref.start_logits[finite], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.end_logits[finite], ref.end_logits[finite], atol=1e-5, rtol=0)


@pytest.mark.parametrize("features", FEATURES)
def test_joint_loss_and_errors(tokenizer, tmp_path, features):
    reader = make_reader(tokenizer, features=features).train()
    examples = load_squad(write_squad(tmp_path / "s.json"))
    batch = collate_features(reader.training_features(examples))
    out = reader(**batch)
    assert set(out.metrics) >= {"qa_loss", "skim_loss", "keep_recall"}
    assert out.loss.item() == pytest.approx(out.metrics["qa_loss"] + out.metrics["skim_loss"], rel=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in reader.predictors.parameters())
    assert reader.encoder.layers[0].attn.query.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="eval"):
        reader(batch["input_ids"], batch["attention_mask"], context_mask=batch["context_mask"])
    with pytest.raises(ConfigError, match="context_mask"):
        reader.eval()(batch["input_ids"], batch["attention_mask"])
    with pytest.raises(ConfigError, match="out of range"):
        BlockSkimReader(reader.encoder, tokenizer, READER, BlockSkimConfig(skim_layers=[3]))
    with pytest.raises(ConfigError, match="multiple of 4"):
        BlockSkimConfig(block_size=6)
    with pytest.raises(ConfigError, match="features"):
        BlockSkimConfig(features="everything")


def test_predictors_learn_faster_than_the_pretrained_reader(tokenizer):
    reader = make_reader(tokenizer)
    reader.skim_config.predictor_lr_scale = 10.0
    optimizer = reader_optimizer(reader, lr=1e-4, weight_decay=0.01)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    for name, p in reader.named_parameters():
        want_lr = 1e-3 if name.startswith("predictors.") else 1e-4
        want_decay = 0.0 if p.ndim < 2 or "norm" in name else 0.01
        assert lr_of[id(p)] == pytest.approx((want_lr, want_decay)), name
    assert len(lr_of) == len(list(reader.parameters()))


def test_training_recipe_learns_saves_and_resumes(tiny_encoder_dir, tmp_path):
    data = write_squad(tmp_path / "train.json")
    skim = BlockSkimConfig(block_size=8, skim_layers=[0], threshold=0.5)

    def config(name, steps, **kw):
        return ReaderTrainingConfig(output_dir=str(tmp_path / name), data=[str(data)], model=str(tiny_encoder_dir),
                                    eval_fraction=0.0, reader=READER, max_steps=steps, batch_size=2, lr=3e-3,
                                    warmup_ratio=0.0, checkpoint_every=3, device="cpu", **kw)

    full = run_block_skim_training(config("full", 40), skim)
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["skim_loss"] < lines[0]["skim_loss"] and lines[-1]["qa_loss"] < lines[0]["qa_loss"]
    files = {p.name for p in full.model_dir.iterdir()}
    assert {"block_skim.json", "block_skim.safetensors", "model.safetensors"} <= files
    loaded = BlockSkimReader.from_pretrained(full.model_dir, skim=BlockSkimConfig(block_size=8, skim_layers=[0],
                                                                                  threshold=0.2))
    assert loaded.skim_config.threshold == 0.2
    saved = load_file(full.model_dir / "block_skim.safetensors")
    for k, v in loaded.predictors.state_dict().items():
        assert torch.equal(v, saved[k])

    cut = run_block_skim_training(config("cut", 7), skim, stop_after=4)
    assert cut.model_dir is None
    resumed = run_block_skim_training(config("cut", 7, resume=True), skim)
    again = run_block_skim_training(config("again", 7), skim)
    for name in ("block_skim.safetensors", "model.safetensors"):
        a, b = load_file(again.model_dir / name), load_file(resumed.model_dir / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_frozen_reader_trains_only_the_predictors(tokenizer, tmp_path):
    reader = make_reader(tokenizer, skim_layers=(0,), num_layers=3, features="diagonal+question")
    reader.skim_config.freeze_reader = True
    reader.train()
    assert not reader.encoder.training and not reader.qa_outputs.training, "frozen parts run without dropout"
    assert all(not p.requires_grad for p in [*reader.encoder.parameters(), *reader.qa_outputs.parameters()])
    calls = []
    for i, layer in enumerate(reader.encoder.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    batch = collate_features(reader.training_features(load_squad(write_squad(tmp_path / "s.json"))))
    out = reader(**batch)
    assert calls == [0], "layers after the last skim layer are not run"
    assert set(out.metrics) == {"skim_loss", "keep_recall"} and out.loss.item() == out.metrics["skim_loss"]
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reader.predictors.parameters())
    assert all(p.grad is None for p in reader.encoder.parameters())
    optimizer = reader_optimizer(reader, lr=1e-4, weight_decay=0.0)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in reader.predictors.parameters()}


def test_frozen_reader_recipe_keeps_the_plain_reader(tiny_encoder_dir, tmp_path):
    """Predictors trained on a saved reader: its weights are unchanged, the skim loss falls, and with
    threshold 0 the Block Skim reader's logits are the plain reader's."""
    torch.manual_seed(0)
    plain = Reader.from_pretrained(tiny_encoder_dir, READER)
    plain.save_pretrained(tmp_path / "plain")
    data = write_squad(tmp_path / "train.json")
    skim = BlockSkimConfig(block_size=8, skim_layers=[0, 1], threshold=0.5, features="diagonal+question",
                           freeze_reader=True)
    cfg = ReaderTrainingConfig(output_dir=str(tmp_path / "skim"), data=[str(data)], model=str(tmp_path / "plain"),
                               eval_fraction=0.0, reader=READER, max_steps=30, batch_size=2, lr=3e-3,
                               warmup_ratio=0.0, device="cpu")
    result = run_block_skim_training(cfg, skim)
    lines = [json.loads(x) for x in (tmp_path / "skim" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["skim_loss"] < lines[0]["skim_loss"]
    before = load_file(tmp_path / "plain" / "model.safetensors")
    after = load_file(result.model_dir / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    loaded = BlockSkimReader.from_pretrained(result.model_dir, skim=BlockSkimConfig(
        block_size=8, skim_layers=[0, 1], threshold=0.0, features="diagonal+question")).eval()
    plain = Reader.from_pretrained(tmp_path / "plain", READER).eval()
    batch = windows(plain)
    with torch.no_grad():
        ref = plain(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    out = run(loaded, batch)
    live = batch.attention_mask.bool()
    torch.testing.assert_close(out.start_logits[live], ref.start_logits[live], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.end_logits[live], ref.end_logits[live], atol=1e-5, rtol=0)
