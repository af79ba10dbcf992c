"""Natural tasks (Saunshi et al., ICLR 2021): conditional-mean features against the plain formula, prompts
placed where the template says, probes against scikit-learn, and the synthetic world where p* is exact."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reprlab.analysis.natural_tasks import (
    HMMWorld,
    LinearProbe,
    OracleLM,
    PromptTemplate,
    SyntheticConfig,
    SyntheticLM,
    conditional_mean,
    extract_features,
    fit_power,
    head_features,
    kl_epsilon,
    lm_epsilon,
    masked_lm_cross_entropy,
    natural_task,
    prediction_inputs,
    select_probe,
    train_lm,
    word_ids,
    zero_shot,
)
from reprlab.analysis.natural_tasks.synthetic import run_seed, task_split
from reprlab.encoder import Encoder, EncoderConfig
from reprlab.errors import ConfigError, DataFormatError
from reprlab.pretrain.mlm import MLMModel
from reprlab.text.classification import read_classification_tsv
from reprlab.text.tokenizer import Tokenizer

SST2_PROMPT = PromptTemplate("{sentence} . it was {mask} .")


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_pretrained("minilm")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = EncoderConfig.tiny(vocab_size=tokenizer.vocab_size, hidden_dropout=0.0, attention_dropout=0.0)
    m = MLMModel.build(Encoder(cfg), tie=True).eval()
    with torch.no_grad():
        m.head.bias.normal_(std=0.5)
    return m


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("distribution", ["softmax", "quad"])
def test_conditional_mean_is_phi_times_the_distribution_over_the_vocabulary_and_a_subset(distribution):
    g = torch.Generator().manual_seed(0)
    f, E, b = torch.randn(3, 5, generator=g), torch.randn(12, 5, generator=g), torch.randn(12, generator=g)
    for subset in (None, [1, 4, 7]):
        words = range(12) if subset is None else subset
        for i in range(3):
            z = torch.stack([f[i] @ E[w] + b[w] for w in words])
            p = torch.softmax(z, 0) if distribution == "softmax" else z.clamp_min(1e-6) / z.clamp_min(1e-6).sum()
            expected = sum(p[k] * E[w] for k, w in enumerate(words))
            torch.testing.assert_close(conditional_mean(f, E, b, subset, distribution)[i], expected, rtol=1e-5,
                                       atol=1e-6)


def test_head_features_times_phi_are_the_head_logits(model):
    h = torch.randn(4, model.encoder.config.hidden_size)
    logits = F.linear(head_features(model.head, h), model.head.output_embeddings, model.head.bias)
    torch.testing.assert_close(logits, model.head(h))


def test_prompt_is_inserted_where_the_template_says(tokenizer):
    batch = prediction_inputs(tokenizer, ["a gripping film", "dull"], SST2_PROMPT)
    first = tokenizer.convert_ids_to_tokens(batch["input_ids"][0][batch["attention_mask"][0] == 1])
    assert first == ["[CLS]", "a", "gripping", "film", ".", "it", "was", "[MASK]", ".", "[SEP]"]
    assert batch["mask_position"].tolist() == [7, 5]
    assert (batch["input_ids"][torch.arange(2), batch["mask_position"]] == tokenizer.mask_id).all()
    before = prediction_inputs(tokenizer, ["rain in spain"], PromptTemplate("{mask} news : {sentence}"))
    assert tokenizer.convert_ids_to_tokens(before["input_ids"][0]) == ["[CLS]", "[MASK]", "news", ":", "rain", "in",
                                                                       "spain", "[SEP]"]
    assert before["mask_position"].tolist() == [1]
    plain = prediction_inputs(tokenizer, ["so good"])  # no prompt: the masked next word
    assert tokenizer.convert_ids_to_tokens(plain["input_ids"][0]) == ["[CLS]", "so", "good", "[MASK]", "[SEP]"]
    cut = prediction_inputs(tokenizer, ["first second " + "word " * 50], SST2_PROMPT, max_length=12)
    tokens = tokenizer.convert_ids_to_tokens(cut["input_ids"][0])  # the sentence's end is cut, not the prompt
    assert tokens == ["[CLS]", "first", "second", "word", "word", "word", ".", "it", "was", "[MASK]", ".", "[SEP]"]
    for bad in ("{sentence} it was", "{mask} {mask} {sentence}", "{sentence} {mask} {sentence}"):
        with pytest.raises(ConfigError):
            PromptTemplate(bad)


def test_extracted_features_equal_the_plain_computation(model, tokenizer):
    texts = ["a gripping , funny film", "dull", "the plot goes nowhere and the actors know it"]
    subset = word_ids(tokenizer, ["great", "terrible", "good", "bad"])
    feats = extract_features(model, tokenizer, texts, SST2_PROMPT, subset=subset, batch_size=2, show_progress=False)
    batch = prediction_inputs(tokenizer, texts, SST2_PROMPT)
    with torch.no_grad():
        hidden = model.encoder(batch["input_ids"], batch["attention_mask"]).last_hidden_state  # (B, T, H)
        logits = model.full_logits(batch["input_ids"], batch["attention_mask"])  # (B, T, V)
    rows = torch.arange(3)
    h, z = hidden[rows, batch["mask_position"]], logits[rows, batch["mask_position"]]
    p = torch.softmax(z, -1)
    E = model.head.output_embeddings.detach()
    np.testing.assert_allclose(feats["h"], h.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["p_subset"], p[:, subset].numpy(), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(feats["phi_p"], (p @ E).numpy(), rtol=1e-4, atol=1e-6)
    sub = torch.softmax(z[:, subset], -1) @ E[subset]
    np.testing.assert_allclose(feats["phi_p_subset"], sub.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(feats["f"] @ E.numpy().T + model.head.bias.detach().numpy(), z.numpy(), rtol=1e-3,
                               atol=1e-4)
    other = extract_features(model, tokenizer, texts, subset=subset, show_progress=False)  # another prompt, other features
    assert not np.allclose(other["h"], feats["h"])


def test_held_out_cross_entropy_of_a_uniform_head_is_log_v(model, tokenizer):
    flat = MLMModel.build(model.encoder, tie=True).eval()
    with torch.no_grad():
        flat.head.dense.weight.zero_()
        flat.head.dense.bias.zero_()  # f = LN(0) = 0, so the logits are the bias
    texts = ["the cat sat on the mat", "a gripping , funny film about two brothers"]
    V = tokenizer.vocab_size
    out = masked_lm_cross_entropy(flat, tokenizer, texts, show_progress=False)
    assert math.isclose(out["cross_entropy"], math.log(V), rel_tol=1e-5) and out["predicted"] >= 2
    with torch.no_grad():
        flat.head.bias.fill_(1.0 / V)  # a Quad model predicting the uniform distribution
    quad = masked_lm_cross_entropy(flat, tokenizer, texts, distribution="quad", show_progress=False)
    assert math.isclose(quad["cross_entropy"], math.log(V), rel_tol=1e-5)
    with torch.no_grad():
        flat.head.bias.zero_()
        flat.head.bias[tokenizer.token_to_id("the")] = 30.0  # all mass on "the"
    peaked = masked_lm_cross_entropy(flat, tokenizer, ["the the the the the the"], show_progress=False)
    assert peaked["cross_entropy"] < 1e-6 and peaked["accuracy"] == 1.0


def test_zero_shot_picks_the_class_with_the_most_probability():
    p = np.array([[0.2, 0.1, 0.0], [0.01, 0.3, 0.05], [0.1, 0.05, 0.1]])
    assert zero_shot(p, [[0], [1]]).tolist() == [0, 1, 0]
    assert zero_shot(p, [[0], [1, 2]]).tolist() == [0, 1, 1]


def test_word_ids_refuses_words_of_several_pieces(tokenizer):
    assert len(word_ids(tokenizer, ["great", "terrible"])) == 2
    with pytest.raises(ConfigError):
        word_ids(tokenizer, ["electroencephalography"])


# ----------------------------------------------------------------------------- probes


def test_probe_equals_scikit_learn_logistic_regression():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    y = (X @ rng.normal(size=(6, 3))).argmax(1)
    X += rng.normal(scale=1.5, size=X.shape)  # not separable: the penalty matters
    for l2 in (1e-3, 1e-1):
        ours = LinearProbe(l2, standardize=False).fit(X, y)
        ref = sklearn.LogisticRegression(C=1.0 / (l2 * len(X)), tol=1e-10, max_iter=10_000).fit(X, y)
        np.testing.assert_allclose(ours.weight - ours.weight.mean(0), ref.coef_ - ref.coef_.mean(0), atol=2e-3)
        assert (ours.predict(X) == ref.predict(X)).mean() > 0.99


def test_probe_selects_the_penalty_on_dev_and_separates_separable_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 4)) * [1e-4, 1e-4, 1.0, 1.0]  # tiny-scale informative columns: standardisation
    y = (X[:, 0] > 0).astype(int)
    probe, dev = select_probe(X[:300], y[:300], X[300:], y[300:])
    assert probe.accuracy(X[300:], y[300:]) >= 0.97 and set(dev) == {probe.l2} | set(dev)
    assert dev[probe.l2] == max(dev.values())
    with pytest.raises(ConfigError):
        LinearProbe(-1.0)


# ----------------------------------------------------------------------------- the synthetic world


def test_forward_filter_equals_brute_force_over_hidden_paths():
    world = HMMWorld.random(vocab_size=3, states=2, concentration=0.5, seed=3)
    contexts = np.array(list(itertools.product(range(3), repeat=3)))  # every context of 3 words
    got = world.next_word_probs(contexts)
    for c, p in zip(contexts, got):
        joint = np.zeros(3)
        for path in itertools.product(range(2), repeat=4):
            weight = world.start[path[0]] * np.prod([world.trans[a, b] for a, b in zip(path, path[1:])])
            weight *= np.prod([world.emit[h, w] for h, w in zip(path, c)])
            joint += weight * world.emit[path[3]]
        np.testing.assert_allclose(p, joint / joint.sum(), rtol=1e-10)


def test_samples_follow_the_model():
    world = HMMWorld.random(vocab_size=4, states=3, concentration=0.5, seed=1)
    words = world.sample(100_000, 2, np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(words[:, 0], minlength=4) / len(words), world.start @ world.emit, atol=0.01)
    w1 = np.bincount(words[:, 0], minlength=4).argmax()
    follow = words[words[:, 0] == w1, 1]
    np.testing.assert_allclose(np.bincount(follow, minlength=4) / len(follow),
                               world.next_word_probs(np.array([[w1]]))[0], atol=0.02)


def test_the_probe_on_p_star_is_perfect_and_the_true_lm_has_epsilon_zero():
    world = HMMWorld.random(vocab_size=30, states=6, seed=0)
    task = natural_task(world, subset_size=8, margin_quantile=0.2, length=10, seed=0)
    rng = np.random.default_rng(0)
    (_, p_tr, y_tr), (_, p_dev, y_dev), (c_te, p_te, y_te) = [task_split(world, task, n, 10, rng) for n in (1500, 500, 1000)]
    assert 0.3 < y_te.mean() < 0.7  # both labels occur
    probe, _ = select_probe(p_tr, y_tr, p_dev, y_dev, l2_grid=(1e-6, 1e-4))
    assert probe.accuracy(p_te, y_te) == 1.0
    eps = lm_epsilon(OracleLM(world), world, c_te)
    assert eps["kl"] == 0.0 and eps["epsilon"] == 0.0
    uniform = np.full_like(p_te, 1.0 / p_te.shape[1])
    assert kl_epsilon(p_te, uniform) > 0.1 and kl_epsilon(p_te, p_te) == 0.0


def test_kl_epsilon_is_kl_of_the_true_distribution_from_the_model():
    p = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05]])
    q = np.array([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]])
    expected = np.mean([0.5 * np.log(2) * 2, 0.9 * np.log(0.9 / 0.5) + 2 * 0.05 * np.log(0.05 / 0.25)])
    assert math.isclose(kl_epsilon(p, q), expected, rel_tol=1e-12)  # KL(p* || p_f): zero-mass words of p* add nothing


def test_quad_training_makes_the_logits_a_distribution():
    """The optimum of Quad is z = p*: a Quad-trained LM's logits sum to about 1 and track p*; a CE LM's do not."""
    world = HMMWorld.random(vocab_size=12, states=3, concentration=0.3, seed=0)
    contexts = world.sample(300, 6, np.random.default_rng(5))
    p_star = world.next_word_probs(contexts)
    sums = {}
    for loss in ("quad", "ce"):
        torch.manual_seed(0)
        lm = SyntheticLM(12, dim=8, hidden=24)
        train_lm(world, lm, loss, steps=300, batch_size=32, length=7, lr=1e-2)
        z = lm.context_features(contexts)["logits"]
        sums[loss] = float(np.abs(z.sum(1) - 1).mean())
        if loss == "quad":
            assert np.abs(z - p_star).mean() < 0.03 and lm.distribution == "quad"
    assert sums["quad"] < 0.1 < sums["ce"]


@pytest.fixture(scope="module")
def tiny_records():
    return run_seed(SyntheticConfig.tiny(steps=300, snapshots=(0, 300)), seed=0)


def test_training_lowers_epsilon_and_the_probe_error(tiny_records):
    by = {(r["loss"], r["step"]): r for r in tiny_records}
    for loss in ("ce", "quad"):
        start, end = by[(loss, 0)], by[(loss, 300)]
        assert end["epsilon"] < 0.25 * start["epsilon"], loss
        assert end["errors"]["phi_p"] <= start["errors"]["phi_p"], loss
    assert by[("quad", 300)]["quad"] == by[("quad", 300)]["epsilon"]  # a Quad LM is measured on its own objective
    assert by[("ce", 300)]["kl"] == by[("ce", 300)]["epsilon"]
    assert by[("oracle", None)]["epsilon"] == 0.0


def test_fit_power_recovers_the_square_root_rate():
    eps = np.linspace(0.001, 0.5, 40)
    fit = fit_power(eps, 0.02 + 0.3 * np.sqrt(eps))
    assert fit["best_exponent"] == 0.5 and fit["r2_sqrt"] > 0.999 and fit["r2_linear"] < fit["r2_sqrt"]
    assert math.isclose(fit["a"], 0.02, abs_tol=1e-9) and math.isclose(fit["b"], 0.3, rel_tol=1e-9)


# ----------------------------------------------------------------------------- the TSV reader


def test_reader_takes_both_layouts_and_names_the_bad_line(tmp_path):
    sst = tmp_path / "sst.tsv"
    sst.write_text("sentence\tlabel\ngood fun \t1\nawful \t0\n")
    data = read_classification_tsv(sst)
    assert data.texts == ["good fun", "awful"] and data.label_ids() == [1, 0]
    ag = tmp_path / "ag.tsv"
    ag.write_text("Stocks fell\tBusiness\nA goal\tSports\n")
    assert read_classification_tsv(ag).label_ids(["World", "Sports", "Business", "Sci/Tech"]) == [2, 1]
    bad = tmp_path / "bad.tsv"
    bad.write_text("fine\t1\nno tab here\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv:2: "):
        read_classification_tsv(bad)
    bad.write_text("fine\t1\n\t0\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv:2: empty text"):
        read_classification_tsv(bad)
    with pytest.raises(DataFormatError, match="not among"):
        read_classification_tsv(ag).label_ids(["World"])


def test_reader_on_the_real_files(shared_data):
    test = read_classification_tsv(shared_data("sst2", "test.tsv"))
    assert len(test) == 872 and test.names() == ["0", "1"]
    ag = read_classification_tsv(shared_data("agnews", "test.tsv"))
    assert len(ag) == 7600 and ag.names() == ["Business", "Sci/Tech", "Sports", "World"]
