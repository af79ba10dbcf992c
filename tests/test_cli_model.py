"""The reprlab commands for model info, PMI vocabularies, pre-training, distillation and compression.

Every command runs end to end through ``reprlab.cli.main`` on the tiny model and texts written here.
"""

import json
import random

import pytest
import torch

from reprlab.cli import main
from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.pretrain.masking import MASKING

FILLER = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
          "quebec romeo sierra tango uniform victor whiskey xray yankee zulu red green blue yellow orange purple "
          "river mountain forest desert ocean island valley meadow garden harbour bridge tower castle market "
          "school library museum theatre station airport").split()


def run(argv, capsys):
    """(exit status, stdout, stderr) of ``reprlab argv``; argparse errors count as exit status 2."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def corpus(tmp_path):
    """Paragraphs of filler words with the collocation "kuala lumpur" planted once in each, and the
    frequent but independent words "the" and "city" (often, but not always, together)."""
    rng = random.Random(0)
    paragraphs = []
    for i in range(80):
        words = rng.choices(FILLER, k=12)
        words.insert(rng.randrange(len(words) + 1), "kuala lumpur")
        words.insert(rng.randrange(len(words) + 1), "the city" if i % 2 else "the")
        words.insert(rng.randrange(len(words) + 1), "city")
        sentences = [" ".join(words[j:j + 5]).capitalize() + "." for j in range(0, len(words), 5)]
        paragraphs.append(" ".join(sentences))
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


@pytest.fixture
def beir(tmp_path):
    """A BEIR folder with a train split: 10 queries, each with one relevant document among 30."""
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    rng = random.Random(1)
    docs = {f"d{i}": " ".join(rng.choices(FILLER, k=20)) for i in range(30)}
    with open(folder / "corpus.jsonl", "w") as f:
        for doc_id, text in docs.items():
            f.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for q in range(10):
            f.write(json.dumps({"_id": f"q{q}", "text": " ".join(docs[f"d{q}"].split()[:4])}) + "\n")
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{q}\td{q}\t1\n" for q in range(10)))
    return folder


def num_params(module):
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- model-info


def test_model_info_counts_the_params_of_the_built_encoder(capsys, tiny_model_dir, tmp_path):
    code, out, _ = run(["model-info", "tiny", "--json", "--seq-len", "32"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["total_params"] == num_params(Encoder(EncoderConfig.tiny()))
    assert info["seq_len"] == 32 and info["total_flops"] > 0
    assert info["by_block"]["attention"]["params"] + info["by_block"]["ffn"]["params"] < info["total_params"]

    config = tmp_path / "three_layers.json"
    config.write_text(json.dumps(EncoderConfig.tiny(num_layers=3).to_dict()))
    code, out, _ = run(["model-info", str(config), "--json"], capsys)
    assert json.loads(out)["total_params"] == num_params(Encoder(EncoderConfig.tiny(num_layers=3)))

    code, out, _ = run(["model-info", str(tiny_model_dir), "--json"], capsys)
    assert json.loads(out)["total_params"] == num_params(Encoder.from_pretrained(tiny_model_dir))

    code, out, _ = run(["model-info", "tiny", "--json", "--attention", "synthesizer-dense"], capsys)
    expected = Encoder(EncoderConfig.tiny(attention="synthesizer-dense"))
    assert json.loads(out)["total_params"] == num_params(expected) != num_params(Encoder(EncoderConfig.tiny()))

    # softmax attention is quadratic in the length: doubling it more than doubles the attention FLOPs
    flops = [json.loads(run(["model-info", "tiny", "--json", "--seq-len", n], capsys)[1])["by_block"]["attention"]
             ["flops"] for n in ("32", "64")]
    assert flops[1] > 2 * flops[0]


def test_model_info_prints_a_table_per_layer_and_block(capsys):
    code, out, _ = run(["model-info", "tiny", "--seq-len", "16"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("tiny: 2 layers, hidden 32")
    blocks = [line.split()[0] for line in lines[2:] if line.strip()]
    assert {"layers.0.attn", "layers.1.ffn", "embeddings", "attention", "ffn", "total"} <= set(blocks)
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1] == f"{num_params(Encoder(EncoderConfig.tiny())):,}"


# ----------------------------------------------------------------------------- pmi-vocab


def test_pmi_vocab_ranks_the_planted_collocation_first(corpus, tmp_path, capsys):
    from reprlab.pretrain.pmi import PMIVocab

    out = tmp_path / "vocab.json"
    code, stdout, _ = run(["-q", "pmi-vocab", "--corpus", str(corpus), "--out", str(out), "--min-count", "5",
                           "--max-n", "3", "--top", "5"], capsys)
    assert code == 0
    rows = stdout.splitlines()
    assert rows[0].split()[:2] == ["rank", "n-gram"]
    assert rows[1].split()[:4] == ["1", "kuala", "lumpur", "2"]
    vocab = PMIVocab.load(out)
    assert vocab.top(1)[0].ngram == ("kuala", "lumpur") and vocab.top(1)[0].count == 80
    assert ("the", "city") in vocab  # frequent enough to be a candidate, but ranked below
    assert vocab.config.max_n == 3 and len(vocab.config.proportions) == 2


# ----------------------------------------------------------------------------- pretrain


def mlm_argv(corpus, model, out, *extra):
    return ["-q", "pretrain", "mlm", "--corpus", str(corpus), "--model", str(model), "--out", str(out),
            "--max-length", "24", "--batch-size", "4", "--max-steps", "4", "--checkpoint-every", "2",
            "--lr", "1e-3", "--device", "cpu", "--log-every", "1", *extra]


def test_pretrain_mlm_writes_a_model_that_loads_and_resumes_exactly(corpus, tiny_model_dir, tmp_path, capsys):
    import shutil

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run(mlm_argv(corpus, tiny_model_dir, full, "--masking", "wwm"), capsys)[0] == 0
    model = SentenceEncoder.from_pretrained(full / "model")
    start = SentenceEncoder.from_pretrained(tiny_model_dir)
    assert not torch.equal(model.encoder.layers[0].ffn.up.weight, start.encoder.layers[0].ffn.up.weight)
    assert (full / "model" / "mlm_head" / "model.safetensors").is_file()

    # a run killed after step 2: only its first checkpoint is left; --resume finishes it exactly
    assert run(mlm_argv(corpus, tiny_model_dir, cut, "--masking", "wwm"), capsys)[0] == 0
    shutil.rmtree(cut / "model")
    newest = sorted((cut / "checkpoints").iterdir())[-1]
    assert newest.name.endswith("4")
    shutil.rmtree(newest)
    code, _, err = run(mlm_argv(corpus, tiny_model_dir, cut, "--masking", "wwm"), capsys)
    one_line_error(code, err, "--resume")  # existing checkpoints are never silently overwritten
    assert run(mlm_argv(corpus, tiny_model_dir, cut, "--masking", "wwm", "--resume"), capsys)[0] == 0
    a = SentenceEncoder.from_pretrained(full / "model").encoder.state_dict()
    b = SentenceEncoder.from_pretrained(cut / "model").encoder.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_pretrain_mlm_with_a_pmi_vocabulary_from_pmi_vocab(corpus, tiny_model_dir, tmp_path, capsys):
    vocab = tmp_path / "vocab.json"
    assert run(["-q", "pmi-vocab", "--corpus", str(corpus), "--out", str(vocab), "--min-count", "5"], capsys)[0] == 0
    out = tmp_path / "pmi"
    argv = mlm_argv(corpus, tiny_model_dir, out, "--masking", "pmi", "--pmi-vocab", str(vocab))
    argv[argv.index("--max-steps") + 1] = "2"
    assert run(argv, capsys)[0] == 0
    assert (out / "model" / "config.json").is_file()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


@pytest.mark.parametrize("masking", list(MASKING))
def test_pretrain_mlm_runs_with_every_masking_of_the_registry(masking, corpus, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / masking
    argv = mlm_argv(corpus, tiny_model_dir, out, "--masking", masking, "--pmi-min-count", "5")
    argv[argv.index("--max-steps") + 1] = "1"
    assert run(argv, capsys)[0] == 0
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "pmi_vocab.json").is_file() == (masking == "pmi")  # built from the corpus when not given


def test_pretrain_cmlm(tiny_model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "cmlm"
    code, _, _ = run(["-q", "pretrain", "cmlm", "--corpus", str(corpus), "--model", str(tiny_model_dir),
                      "--out", str(out), "--num-vectors", "3", "--max-length", "16", "--batch-size", "4",
                      "--max-steps", "2", "--device", "cpu"], capsys)
    assert code == 0
    assert (out / "model" / "cmlm_projection.safetensors").is_file()
    model = SentenceEncoder.from_pretrained(out / "model")
    assert model.encode(["a test sentence"]).shape == (1, 32)


# ----------------------------------------------------------------------------- distill and compress


@pytest.mark.parametrize("method, extra", [("kd", []), ("ckd", ["--ckd-window", "5"]),
                                           ("seed", ["--seed-queue-size", "16"])])
def test_distill_writes_a_student_with_fewer_layers(method, extra, corpus, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / method
    code, _, _ = run(["-q", "distill", method, "--teacher", str(tiny_model_dir), "--student", "layers:1",
                      "--corpus", str(corpus), "--out", str(out), "--max-length", "24", "--batch-size", "8",
                      "--max-steps", "2", "--device", "cpu", "--log-every", "1", *extra], capsys)
    assert code == 0
    student = SentenceEncoder.from_pretrained(out / "model")
    teacher = SentenceEncoder.from_pretrained(tiny_model_dir)
    assert student.encoder.config.num_layers == 1 < teacher.encoder.config.num_layers
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2
    if method == "ckd":
        assert "wr_pair" in record
    if method == "seed":
        assert "seed_ce" in record


def test_compress_approx_lowers_the_parameter_count(beir, tiny_model_dir, tmp_path, capsys):
    from reprlab.distill.approx import ApproxPlan

    out = tmp_path / "approx"
    code, stdout, _ = run(["-q", "compress", "approx", "--model", str(tiny_model_dir), "--data", str(beir),
                           "--out", str(out), "--heldout-fraction", "0.5", "--tolerance", "0.5",
                           "--query-max-length", "16", "--passage-max-length", "32"], capsys)
    assert code == 0
    before = num_params(SentenceEncoder.from_pretrained(tiny_model_dir).encoder)
    after = num_params(SentenceEncoder.from_pretrained(out / "model").encoder)
    assert after < before
    line = next(x for x in stdout.splitlines() if x.startswith("parameters:"))
    assert line.startswith(f"parameters: {before:,} -> {after:,}")
    plan = ApproxPlan.load(out / "plan.json")
    removed = plan.ffn_removed + plan.attention_removed + [i for i, v in plan.heads_removed.items() if v] + \
        [i for i, v in plan.groups_removed.items() if v]
    assert removed
    layer_rows = [x.split()[0] for x in stdout.splitlines()[1:3]]
    assert layer_rows == ["0", "1"]
    assert "removed" in stdout


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["model-info", "nope"], ["'nope'", "tiny", "minilm_l6"]),
        (["model-info", "tiny", "--seq-len", "999"], ["seq_len 999", "max_position_embeddings"]),
        (["model-info", "tiny", "--attention", "nope"], ["--attention", "invalid choice"]),
        (["pmi-vocab", "--corpus", "/nonexistent/corpus.txt", "--out", "OUT/v.json"], ["/nonexistent/corpus.txt"]),
        (["pmi-vocab", "--corpus", "CORPUS", "--out", "OUT/v.json", "--min-count", "1000"], ["min_count"]),
        (["pretrain", "mlm", "--corpus", "CORPUS", "--model", "MODEL", "--out", "OUT/m", "--masking", "pmi",
          "--pmi-vocab", "/nonexistent/vocab.json"], ["/nonexistent/vocab.json"]),
        (["pretrain", "mlm", "--corpus", "CORPUS", "--model", "MODEL", "--out", "OUT/m", "--pmi-vocab", "v.json"],
         ["--pmi-vocab", "--masking pmi"]),
        (["pretrain", "mlm", "--corpus", "CORPUS", "--out", "OUT/m", "--masking", "nope"], ["--masking"]),
        (["pretrain", "cmlm", "--corpus", "CORPUS", "--out", "OUT/m", "--masking", "pmi"], ["--masking"]),
        (["pretrain", "mlm", "--corpus", "CORPUS", "--model", "/nonexistent/model", "--out", "OUT/m"],
         ["/nonexistent/model"]),
        (["distill", "kd", "--teacher", "MODEL", "--student", "layers:0,9", "--corpus", "CORPUS", "--out", "OUT/d"],
         ["[9]", "layers 0..1"]),
        (["distill", "kd", "--teacher", "MODEL", "--student", "config:nonsense", "--corpus", "CORPUS",
          "--out", "OUT/d"], ["config:nonsense"]),
        (["distill", "ckd", "--teacher", "MODEL", "--corpus", "CORPUS", "--out", "OUT/d", "--ckd-window", "4"],
         ["window"]),
        (["compress", "approx", "--model", "MODEL", "--data", "/nonexistent/beir", "--out", "OUT/a"],
         ["/nonexistent/beir"]),
        (["compress", "approx", "--model", "MODEL", "--data", "BEIR", "--out", "OUT/a", "--split", "test"],
         ["test split"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needles, corpus, beir, tiny_model_dir, tmp_path, capsys):
    fill = {"CORPUS": str(corpus), "MODEL": str(tiny_model_dir), "BEIR": str(beir)}
    argv = [fill.get(a, a.replace("OUT", str(tmp_path))) for a in argv]
    code, _, err = run(["-q", *argv], capsys)
    one_line_error(code, err, *needles)
    assert "Traceback" not in err
