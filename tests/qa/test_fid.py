"""The Fusion-in-Decoder reader: passages encoded alone, a decoder over all of them, attention paths, decoding,
the cross-attention passage scores, persistence and the ``train fid`` recipe."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from reprlab.encoder import Encoder, SentenceEncoder
from reprlab.errors import ConfigError, ModelLoadError
from reprlab.qa.fid import FidConfig, FidReader, FidTeacher, aggregate_cross_attention
from reprlab.qa.fid.generate import beam_search, greedy, greedy_search, surface_text
from reprlab.qa.fid.layers import CausalSelfAttention, CrossAttention, DecoderLayer
from reprlab.qa.fid.recipe import FidCollate, FidTrainingConfig, evaluate_fid, fid_loss, run_fid
from reprlab.qa.open_qa import ReaderExample
from reprlab.qa.teachers import ScoringConfig, load_teacher, teacher_kind

from .conftest import CONTEXTS, QAS, write_squad

PASSAGES = [("Super Bowl", c) for c in CONTEXTS]


@pytest.fixture
def reader(tiny_encoder_dir):
    torch.manual_seed(3)
    return FidReader.from_encoder(tiny_encoder_dir, FidConfig(passage_max_length=40, answer_max_length=6)).eval()


def batch_of(reader, questions, passages, **kw):
    return reader.featurize(questions, passages, **kw)


# ------------------------------------------------------------------------------------------------ fusion


def test_the_encoder_sees_each_passage_alone(reader):
    """Changing passage j changes no encoder state of passage i != j (and does change j's)."""
    ps = PASSAGES[:3]
    a = batch_of(reader, ["Who won?"], [ps])
    changed = [ps[0], ("Other", "A completely different passage about rivers and mountains."), ps[2]]
    b = batch_of(reader, ["Who won?"], [changed])
    with torch.no_grad():
        ma, _ = reader.encode(a)
        mb, _ = reader.encode(b)
    La, Lb = a.input_ids.shape[-1], b.input_ids.shape[-1]
    for j in (0, 2):  # same tokens, possibly padded to another length: compare the real tokens
        n = int(a.attention_mask[0, j].sum())
        torch.testing.assert_close(ma[0, j * La: j * La + n], mb[0, j * Lb: j * Lb + n], atol=1e-5, rtol=0)
    n = int(a.attention_mask[0, 1].sum())
    assert not torch.allclose(ma[0, La: La + n], mb[0, Lb: Lb + n], atol=1e-3)


def test_the_decoder_attends_over_every_passage_and_never_over_padding(reader):
    batch = batch_of(reader, ["Who won?"], [PASSAGES])
    inputs, _ = reader.targets(["Denver Broncos"])
    memory, mask = reader.encode(batch)
    memory = memory.detach().requires_grad_(True)
    logits, _ = reader.decode(inputs, reader.memory_kv(memory), mask)
    logits.sum().backward()
    grad = memory.grad[0].abs().sum(-1)  # (n*L,)
    B, n, L = batch.input_ids.shape
    per_passage = grad.view(n, L)
    real = batch.attention_mask[0].bool()
    assert bool((per_passage[real] > 0).all()), "some real token of some passage gets no attention"
    assert float(per_passage[~real].abs().sum()) == 0.0, "padding leaked into the decoder"


def test_a_padded_batch_equals_one_question_at_a_time(reader):
    questions = ["Who won the game?", "Where was the game played?"]
    passages = [PASSAGES[:3], [PASSAGES[1]]]  # 3 passages vs 1 (two empty slots), different lengths
    answers = ["Denver Broncos", "Levi's Stadium"]
    batch = batch_of(reader, questions, passages)
    inputs, labels = reader.targets(answers)
    with torch.no_grad():
        together = reader(batch, inputs).logits
        for b in range(2):
            alone_in, alone_lab = reader.targets([answers[b]])
            alone = reader(batch_of(reader, [questions[b]], [passages[b]]), alone_in).logits
            T = alone.shape[1]
            torch.testing.assert_close(together[b, :T], alone[0], atol=1e-4, rtol=1e-4)
    assert batch.passage_mask.tolist() == [[True, True, True], [True, False, False]]
    assert reader.answer_batch(questions, passages) == [reader.answer_batch([q], [p])[0]
                                                        for q, p in zip(questions, passages)]


def test_targets_shift_the_answer_by_one(reader):
    inputs, labels = reader.targets(["Denver Broncos", "308"])
    tok = reader.tokenizer
    body = tok.encode_raw(["Denver Broncos"])[0].ids[1:-1]
    assert inputs[0, : len(body) + 1].tolist() == [tok.cls_id, *body]
    assert labels[0, : len(body) + 1].tolist() == [*body, tok.sep_id]
    short = tok.encode_raw(["308"])[0].ids[1:-1]
    assert (labels[1, len(short) + 1:] == -100).all() and labels[1, len(short)] == tok.sep_id


def test_the_decoder_is_causal(reader):
    batch = batch_of(reader, ["Who won?"], [PASSAGES[:2]])
    a = torch.tensor([[101, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 3:] = torch.tensor([900, 901])
    with torch.no_grad():
        la, lb = reader(batch, a).logits, reader(batch, b).logits
    torch.testing.assert_close(la[0, :3], lb[0, :3], atol=1e-5, rtol=0)
    assert not torch.allclose(la[0, 3:], lb[0, 3:])


# ------------------------------------------------------------------------------------------------ attention paths


@pytest.mark.parametrize("train", [False, True])
def test_eager_attention_equals_sdpa_and_returns_pre_softmax_scores(train):
    torch.manual_seed(0)
    B, Tq, Tk, H, nh = 2, 5, 11, 32, 4
    x, mem = torch.randn(B, Tq, H), torch.randn(B, Tk, H)
    mask = torch.ones(B, Tk, dtype=torch.bool)
    mask[1, 7:] = False
    self_attn, cross = CausalSelfAttention(H, nh, dropout=0.5), CrossAttention(H, nh, dropout=0.5)
    self_attn.train(train)
    cross.train(train)
    for module, run in ((self_attn, lambda s: self_attn(x, output_scores=s)),
                        (cross, lambda s: cross(x, cross.memory_kv(mem), mask, output_scores=s))):
        if train:  # dropout draws differ between the paths; only the shapes can be compared
            assert run(True)[0].shape == run(False)[0].shape
            continue
        fast, none = run(False)
        eager, scores = run(True)
        assert none is None
        torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-5)
    if not train:  # the scores are q k^T / sqrt(hs), written out here
        q = cross.query(x).view(B, Tq, nh, H // nh).transpose(1, 2)
        k = cross.key(mem).view(B, Tk, nh, H // nh).transpose(1, 2)
        _, scores = cross(x, cross.memory_kv(mem), mask, output_scores=True)
        torch.testing.assert_close(scores, q @ k.transpose(-1, -2) / math.sqrt(H // nh))


def test_a_masked_memory_token_changes_nothing():
    torch.manual_seed(1)
    cross = CrossAttention(32, 4)
    x, mem = torch.randn(1, 3, 32), torch.randn(1, 6, 32)
    mask = torch.tensor([[True, True, True, True, False, False]])
    mem2 = mem.clone()
    mem2[0, 4:] = 100.0
    for s in (False, True):
        torch.testing.assert_close(cross(x, cross.memory_kv(mem), mask, s)[0], cross(x, cross.memory_kv(mem2), mask, s)[0])


def test_decoder_layers_are_warm_started_from_the_encoder(tiny_encoder_dir):
    enc = Encoder.from_pretrained(tiny_encoder_dir)
    layer = DecoderLayer.from_encoder_layer(enc.config, enc.layers[1])
    for name in ("query", "key", "value", "out"):
        torch.testing.assert_close(getattr(layer.attn, name).weight, getattr(enc.layers[1].attn, name).weight)
    torch.testing.assert_close(layer.ffn.up.weight, enc.layers[1].ffn.up.weight)
    torch.testing.assert_close(layer.ffn_norm.weight, enc.layers[1].ffn_norm.weight)
    assert not torch.allclose(layer.cross.query.weight, enc.layers[1].attn.query.weight)  # fresh
    reader = FidReader.from_encoder(tiny_encoder_dir, FidConfig(decoder_layers=[1, 1, 0]))
    assert len(reader.decoder) == 3
    torch.testing.assert_close(reader.decoder[2].attn.key.weight, enc.layers[0].attn.key.weight)
    with pytest.raises(ConfigError, match="decoder_layers"):
        FidReader.from_encoder(tiny_encoder_dir, FidConfig(decoder_layers=[5]))


def test_the_output_projection_is_the_input_embedding_table(reader, tmp_path):
    batch = batch_of(reader, ["Who won?"], [PASSAGES[:1]])
    inputs, labels = reader.targets(["Denver"])
    reader.zero_grad()
    reader(batch, inputs, labels).loss.backward()
    word = reader.encoder.embeddings.word.weight
    assert word.grad is not None and float(word.grad[labels[0, 0]].abs().sum()) > 0
    reader.save_pretrained(tmp_path / "fid")
    from safetensors.torch import load_file

    decoder_keys = load_file(tmp_path / "fid" / "decoder.safetensors").keys()
    assert not any("word" in k for k in decoder_keys)  # one word table, stored once, with the encoder


# ------------------------------------------------------------------------------------------------ decoding


def markov_step(table: dict, V: int):
    """A step function from {prefix tuple (after bos): {token: prob}}; unlisted prefixes end at once."""
    def step(prefixes):
        out = torch.full((prefixes.size(0), V), -1e9)
        for i, row in enumerate(prefixes.tolist()):
            probs = table.get(tuple(row[1:]), {1: 1.0})
            for tok, p in probs.items():
                out[i, tok] = math.log(p)
        return out.log_softmax(-1)
    return step


def test_beam_search_finds_what_greedy_misses():
    # eos = 1. Greedy takes 2 (0.6) and then faces four equal tokens (0.25): 0.15 at best; 3 (0.4), 4 (1.0), eos (1.0)
    # is better, and it continues the second beam, not the first
    V = 6
    table = {(): {2: 0.6, 3: 0.4}, (2,): {1: 0.25, 4: 0.25, 5: 0.25, 0: 0.25}, (3,): {4: 1.0}, (3, 4): {1: 1.0}}
    step = markov_step(table, V)
    assert greedy_search(step, 1, bos=9, eos=1, max_length=4)[0][:1] == [2]
    assert beam_search(step, 2, 2, bos=9, eos=1, max_length=4, length_penalty=0.0) == [[3, 4], [3, 4]]


@pytest.mark.parametrize("seed", range(4))
def test_wide_beam_search_is_exhaustive_search(seed):
    """With as many beams as sequences, beam search returns the best normalised hypothesis of a brute force
    (answers of every length win somewhere: [SEP] is made unlikely early on in half of the tables)."""
    rng = np.random.default_rng(seed)
    V, eos, max_len, words = 4, 1, 4, [0, 2, 3]
    table = {}
    for length in range(max_len):
        for prefix in itertools.product(words, repeat=length):
            p = rng.dirichlet(np.ones(V))
            if seed % 2 and length < max_len - 1:
                p[eos] *= 0.05
            p[eos] = 1.0 if length == max_len - 1 else p[eos]  # the last step must end
            p = p / p.sum() if length < max_len - 1 else np.eye(V)[eos]
            table[prefix] = {t: float(p[t]) for t in range(V) if p[t] > 0}
    step = markov_step(table, V)
    for lp in (0.0, 1.0):
        scored = {}
        for length in range(1, max_len + 1):
            for body in itertools.product(words, repeat=length - 1):
                seq = (*body, eos)
                logp = sum(math.log(table[seq[:i]][seq[i]]) for i in range(length))
                scored[body] = logp / length ** lp
        best = max(scored.values())
        got = beam_search(step, 2, 27, bos=9, eos=eos, max_length=max_len, length_penalty=lp)
        assert got[0] == got[1] and scored[tuple(got[0])] == pytest.approx(best), (lp, got, best)


def test_one_beam_is_greedy_on_the_reader(reader):
    batch = batch_of(reader, ["Who won?", "Where?"], [PASSAGES[:2], PASSAGES[1:]])
    with torch.no_grad():
        memory, mask = reader.encode(batch)
        kv = reader.memory_kv(memory)
        g = greedy(reader, kv, mask, 5)
    assert reader.generate_ids(batch, num_beams=1, max_length=5) == g
    assert reader.generate_ids(batch, num_beams=3, max_length=5) == \
        [reader.generate_ids(batch_of(reader, [q], [p]), num_beams=3, max_length=5)[0]
         for q, p in (("Who won?", PASSAGES[:2]), ("Where?", PASSAGES[1:]))]


def test_answers_are_mapped_back_to_the_passage_text(reader):
    batch = batch_of(reader, ["Where?"], [[PASSAGES[1]]], offsets=True)
    ids = reader.tokenizer.encode_raw(["Levi's Stadium"])[0].ids[1:-1]
    assert surface_text(reader.tokenizer, ids, batch, 0) == "Levi's Stadium"
    other = reader.tokenizer.encode_raw(["Paris Texas"])[0].ids[1:-1]
    assert surface_text(reader.tokenizer, other, batch, 0) == "paris texas"
    q_ids = reader.tokenizer.encode_raw(["Where"])[0].ids[1:-1]  # only in the question: not an answer span
    assert surface_text(reader.tokenizer, q_ids, batch, 0) == "where"


# ------------------------------------------------------------------------------------------------ scores


def plain_scores(scores, passage_tokens, token_mask, softmax, layers, reduce):
    """The paper's aggregation written as loops over layers, heads, decoder tokens and passage tokens."""
    B, n, L = passage_tokens.shape
    out = torch.full((B, n), float("-inf"))
    for b in range(B):
        flat_mask = passage_tokens[b].reshape(-1)
        for j in range(n):
            if not passage_tokens[b, j].any():
                continue
            total, count = 0.0, 0
            for layer in layers:
                for h in range(scores[layer].shape[1]):
                    for t in range(scores[layer].shape[2]):
                        if not token_mask[b, t]:
                            continue
                        row = scores[layer][b, h, t].clone()
                        if softmax == "post":
                            row = row.masked_fill(~flat_mask, -1e30).softmax(-1)
                        part, real = 0.0, 0
                        for pos in range(L):
                            if passage_tokens[b, j, pos]:
                                part += float(row[j * L + pos])
                                real += 1
                        total += part
                        count += real if reduce == "mean" else 1
            out[b, j] = total / count
    return out


@pytest.mark.parametrize("softmax,reduce,layers", [("pre", "mean", None), ("post", "mean", None),
                                                   ("pre", "sum", [1]), ("post", "sum", [0, 2])])
def test_score_aggregation_equals_a_plain_loop(softmax, reduce, layers):
    torch.manual_seed(0)
    B, nh, T, n, L, nl = 2, 3, 4, 3, 5, 3
    scores = [torch.randn(B, nh, T, n * L) for _ in range(nl)]
    passage_tokens = torch.rand(B, n, L) > 0.3
    passage_tokens[:, :, 0] = True
    passage_tokens[1, 2] = False  # an empty slot
    token_mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    got = aggregate_cross_attention(scores, passage_tokens, token_mask, softmax, layers, reduce)
    want = plain_scores(scores, passage_tokens, token_mask, softmax, layers or list(range(nl)), reduce)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # padding tokens are excluded: anything written there changes nothing
    noisy = [s.clone() for s in scores]
    for s in noisy:
        s.view(B, nh, T, n, L).masked_fill_(~passage_tokens[:, None, None], 1e3)
    torch.testing.assert_close(aggregate_cross_attention(noisy, passage_tokens, token_mask, softmax, layers, reduce),
                               got)


def test_the_teacher_scores_the_first_decoded_token_by_default(reader):
    teacher = FidTeacher(reader, ScoringConfig())
    questions, passages = ["Who won the game?", "Where?"], [PASSAGES[:3], PASSAGES[1:3]]
    got = teacher.score_passages(questions, passages)
    assert [len(g) for g in got] == [3, 2]
    batch = batch_of(reader, questions[:1], passages[:1])
    with torch.no_grad():
        out = reader(batch, torch.tensor([[reader.bos_id]]), output_scores=True)
    want = aggregate_cross_attention(out.cross_scores, batch.attention_mask.bool(), torch.ones(1, 1, dtype=torch.bool))
    np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-5)
    alone = FidTeacher(reader, ScoringConfig(batch_size=1)).score_passages(questions, passages)
    for a, b in zip(got, alone):
        np.testing.assert_allclose(a, b, atol=1e-5)
    post = FidTeacher(reader, ScoringConfig(tokens="all", softmax="post", layers=[0])).score_passages(
        questions, passages)
    assert [len(g) for g in post] == [3, 2] and all(np.isfinite(g).all() for g in post)
    # tokens="all": every position of [CLS] + the greedy answer, each position weighted alike
    every = FidTeacher(reader, ScoringConfig(tokens="all", layers=[0, 1])).score_passages(questions, passages)
    answer = reader.generate_ids(batch, num_beams=1)[0]
    with torch.no_grad():
        out = reader(batch, torch.tensor([[reader.bos_id, *answer]]), output_scores=True)
    T = len(answer) + 1
    per_position = torch.stack([aggregate_cross_attention(
        [s[:, :, t:t + 1] for s in out.cross_scores], batch.attention_mask.bool(), torch.ones(1, 1, dtype=torch.bool),
        "pre", [0, 1])[0] for t in range(T)])  # (T, n)
    assert T > 2 and float((per_position - per_position[0]).abs().max()) > 1e-3  # the positions differ
    np.testing.assert_allclose(every[0], per_position.mean(0).numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="layers"):
        FidTeacher(reader, ScoringConfig(layers=[7]))


def test_bf16_scoring_stays_close_to_fp32(reader):
    questions, passages = ["Who won the game?"], [PASSAGES]
    fp32 = FidTeacher(reader, ScoringConfig()).score_passages(questions, passages)[0]
    bf16 = FidTeacher(reader, ScoringConfig(bf16=True)).score_passages(questions, passages)[0]
    assert np.abs(fp32 - bf16).max() < 0.05 * np.abs(fp32).max() + 1e-3


def test_a_fid_folder_round_trips_and_loads_as_an_encoder_and_a_teacher(reader, tmp_path):
    import reprlab.qa  # noqa: F401  registers the teacher kinds

    reader.save_pretrained(tmp_path / "fid")
    again = FidReader.from_pretrained(tmp_path / "fid")
    batch = batch_of(reader, ["Who won?"], [PASSAGES[:2]])
    inputs, _ = reader.targets(["Denver"])
    with torch.no_grad():
        torch.testing.assert_close(again(batch, inputs).logits, reader(batch, inputs).logits)
    assert again.config == reader.config
    Encoder.from_pretrained(tmp_path / "fid")  # the encoder part is a plain BERT folder
    SentenceEncoder.from_pretrained(tmp_path / "fid")
    assert teacher_kind(tmp_path / "fid").name == "fid"
    assert isinstance(load_teacher(tmp_path / "fid"), FidTeacher)
    with pytest.raises(ModelLoadError, match="not a FiD reader"):
        FidReader.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------ training


def test_teacher_forcing_learns_an_answer_and_greedy_generates_it(reader):
    examples = [ReaderExample("q0", "Who won the game?", ["Denver Broncos"], [("p", *PASSAGES[0])]),
                ReaderExample("q1", "Where was it?", ["Levi's Stadium"], [("p", *PASSAGES[1])])]
    collate = FidCollate(reader, 1)
    opt = torch.optim.AdamW(reader.parameters(), lr=3e-3)
    reader.train()
    first = None
    for _ in range(60):
        loss = fid_loss(reader, collate(examples, np.random.default_rng(0)))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10
    assert evaluate_fid(reader, examples)["exact_match"] == 100.0  # mapped back to "Levi's Stadium"


def test_train_fid_recipe_trains_on_the_train_side_and_scores_the_held_out_side(tiny_encoder_dir, tmp_path):
    qas = [(f"Question {i} about the game?", a) for i, (_, a) in enumerate(QAS * 3)]
    data = write_squad(tmp_path / "s.json", qas=qas, contexts=CONTEXTS * 3)
    config = FidTrainingConfig(output_dir=str(tmp_path / "run"), data=[str(data)], model=str(tiny_encoder_dir),
                               n_passages=2, eval_passages=2, eval_fraction=0.3, fid=FidConfig(passage_max_length=40),
                               max_steps=2, batch_size=2, device="cpu")
    result = run_fid(config)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    held = json.loads((tmp_path / "run" / "eval.json").read_text())
    n_train, n_eval = split["train_questions"][str(data)], split["held_out_questions"][str(data)]
    assert n_train + n_eval == 12 and n_eval >= 1 and result.train_questions == n_train
    assert held["metrics"][str(data)]["n"] == n_eval and result.model_dir.is_dir()
    with pytest.raises(ConfigError, match="n_passages"):
        FidTrainingConfig(output_dir="x", data=[str(data)], n_passages=0)
