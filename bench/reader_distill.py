"""Reader-to-retriever distillation (Izacard & Grave, ICLR 2021) on HotpotQA and XQuAD-en, on a CPU.

Data (``$REPRLAB_SHARED_DATA``): HotpotQA = IRCoT's 500 dev questions, passage pool = all of their
4,858 paragraphs, gold = both supporting paragraphs; XQuAD-en = 1,190 SQuAD v1.1 dev questions as
open retrieval over its 240 paragraphs, gold = the question's paragraph. Each file's questions are
split by the one hash rule on the question id (``reprlab.text.splits``): ``--eval-fraction`` 0.3 is
the reported side (HotpotQA 156 questions), ``--dev-fraction`` 0.15 a dev slice for choosing
settings, the rest trains. Nothing is trained on dev or eval questions; no retriever except the DPR
ceiling ever sees a gold passage.

Models (each stage cached in ``--work-dir`` under a hash of its settings, so a rerun resumes):

* ``fid``: the FiD reader (``reprlab train fid``), MiniLM encoder + decoder warm-started from it,
  trained on the train sides of both files, each question reading BM25's top ``--fid-passages``;
* ``extractive``: the extractive reader (``reprlab train reader``) trained by distant supervision on
  the same questions: every BM25 top-``--fid-passages`` passage that contains a gold answer;
* ``distill-fid``: ``reprlab train reader-distill`` with the FiD teacher, ``--iterations`` rounds from
  ``--first-retriever`` candidates, student all-MiniLM-L6-v2;
* ``distill-extractive``: the same with the extractive teacher (``--ext-signal``), ``--ext-iterations``;
* ``dpr``: ``reprlab train dpr`` on the gold passages of the same training questions, BM25 negatives
  (the supervised ceiling).

A stage that is not named still runs when a named one needs its model (a finished one is reused): the FiD
reader for ``probe``, ``distill-fid`` and the EM/F1 rows (``--read-with fid``), and in the teacher table when
``fid`` is named or ``--fid-from`` given; the extractive reader for ``teachers``, ``distill-extractive`` and
the EM/F1 rows with ``--read-with extractive``.

Reported (``--side``, default eval): (1) the paper's preliminary test: the FiD reader's EM/F1 reading
the top-k of ``--probe-candidates`` first-retriever candidates by retriever score vs by the reader's
cross-attention score, k in ``--probe-k``, and the gold recall@k of each ranking; (2) gold recall@{2,
5, 10} of BM25, MiniLM, the distilled retrievers (each iteration) and DPR; (3) the reader's (``--read-with``)
EM/F1 reading the top ``--read-k`` passages of each retriever. The headline: the distilled
retriever's recall@5 against the best of BM25 / MiniLM, and the share of the gap to DPR it closes.

    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/reader_distill.py            # hours on 2 cores
    python bench/reader_distill.py --side dev --stages fid probe                        # choose settings
    python bench/reader_distill.py --quick              # smoke run (tiny random encoder, ~30 s)
    python bench/reader_distill.py --datasets xquad --side dev --stages extractive teachers   # the extractive teacher
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from reader_distill_report import KS, headline, markdown, plot  # noqa: E402
from reader_distill_teachers import teacher_table  # noqa: E402

DATA_FILES = {"hotpotqa": ("hotpotqa_dev500_ircot", "dev_subsampled.jsonl"),
              "xquad": ("squad_v1.1_dev_xquad_en", "xquad.en.json")}
STAGES = ("fid", "extractive", "teachers", "probe", "distill-fid", "distill-extractive", "dpr", "evaluate")
ROW_ORDER = ("bm25", "minilm", "distill-fid", "distill-extractive", "dpr")
logger = logging.getLogger("reprlab")


def options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[common.bench_options(threads=1, work_dir="runs/reader_distill")])
    p.add_argument("--datasets", nargs="+", default=list(DATA_FILES), choices=list(DATA_FILES))
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages run (default: all)")
    p.add_argument("--side", choices=("eval", "dev"), default="eval", help="questions reported on")
    p.add_argument("--eval-fraction", type=float, default=0.3)
    p.add_argument("--dev-fraction", type=float, default=0.15)
    p.add_argument("--encoder", default=None, help="the encoder every model starts from (default: minilm; with "
                   "--quick a tiny random one, built in the work folder: the code path, not the numbers)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bfloat16 autocast for scoring, retriever training and reading (native on this CPU)")
    g = p.add_argument_group("FiD reader")
    g.add_argument("--fid-epochs", type=float, default=3.0)
    g.add_argument("--fid-passages", type=int, default=10, help="passages read per question in training")
    g.add_argument("--fid-lr", type=float, default=1e-4)
    g.add_argument("--fid-batch-size", type=int, default=4)
    g.add_argument("--passage-max-length", type=int, default=160)
    g.add_argument("--fid-bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="train the FiD reader under bfloat16 autocast")
    g.add_argument("--fid-from", type=Path, default=None,
                   help="use this FiD reader instead of training one: a checkpoint folder of `reprlab train fid` "
                   "(OUT/checkpoints/checkpoint-N, its trainer_state.json beside the weights) or its OUT/model; "
                   "it must have been trained with the same split fractions, on files that include the reported ones "
                   "(checked), so that no reported question was trained on")
    g = p.add_argument_group("distillation")
    g.add_argument("--first-retriever", default="bm25")
    g.add_argument("--iterations", type=int, default=3)
    g.add_argument("--candidates", type=int, default=20)
    g.add_argument("--sample", type=int, default=4)
    g.add_argument("--distill-epochs", type=float, default=1.0)
    g.add_argument("--distill-lr", type=float, default=2e-5)
    g.add_argument("--distill-batch-size", type=int, default=8)
    g.add_argument("--distill-passage-length", type=int, default=192)
    g.add_argument("--loss", choices=("kl", "mse", "margin"), default="kl")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--softmax", choices=("pre", "post"), default="pre")
    g.add_argument("--tokens", choices=("first", "all"), default="first")
    g.add_argument("--ext-epochs", type=float, default=2.0)
    g.add_argument("--ext-iterations", type=int, default=1)
    g.add_argument("--ext-negatives", type=int, default=0,
                   help="the extractive reader also trains on up to this many of each question's top passages "
                        "without an answer, as unanswerable (SQuAD 2.0) examples (default 0: answers only)")
    g.add_argument("--ext-signal", choices=("span", "question-attention", "span-null"), default="span")
    g.add_argument("--ext-temperature", type=float, default=None,
                   help="the extractive teacher's temperature (default: --temperature); the teacher table's "
                   "'matching T' on the dev slice gives its scores the untrained student's spread")
    g.add_argument("--dpr-epochs", type=float, default=3.0)
    g.add_argument("--max-questions", type=int, default=None,
                   help="training questions per file for distillation and DPR (the first ones of the train side; "
                   "default: all)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--read-k", type=int, default=10, help="passages the reader reads in the EM/F1 rows")
    g.add_argument("--read-with", choices=("fid", "extractive"), default="fid",
                   help="the reader of the EM/F1 rows: the FiD reader, or the extractive reader (best span over the "
                   "top --read-k passages, each read alone with the question; no FiD reader is needed then)")
    g.add_argument("--read-questions", type=int, default=None,
                   help="questions of the reported side the reader answers in the EM/F1 rows and the preliminary "
                   "test (the first ones; default: all; 0: no reader rows; recall is always over all of them)")
    g.add_argument("--probe-k", type=int, nargs="+", default=[1, 2, 5])
    g.add_argument("--probe-candidates", type=int, default=20)
    return p


# ----------------------------------------------------------------------------- data


def data_files(args) -> dict[str, Path]:
    """The two files, or (``--quick``) small copies: 40 HotpotQA questions, XQuAD's first two articles."""
    files = {name: common.data_path(*DATA_FILES[name]) for name in dict.fromkeys(args.datasets)}  # in the given order
    if not args.quick:
        return files
    out = args.work_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    small = {}
    if "hotpotqa" in files:
        small["hotpotqa"] = out / "hotpotqa.jsonl"
        small["hotpotqa"].write_text("".join(files["hotpotqa"].read_text().splitlines(keepends=True)[:16]))
    if "xquad" in files:
        squad = json.loads(files["xquad"].read_text())
        small["xquad"] = out / "xquad.json"
        first = squad["data"][0]
        small["xquad"].write_text(json.dumps({"version": "1.1", "data": [{**first,
                                                                          "paragraphs": first["paragraphs"][:4]}]}))
    return small


def tiny_encoder(folder: Path) -> str:
    """A random 2-layer, 32-wide encoder with MiniLM's tokenizer (quick runs)."""
    if not (folder / "model.safetensors").is_file():
        import torch

        from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
        from reprlab.text.tokenizer import Tokenizer

        torch.manual_seed(0)
        config = EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=512)
        SentenceEncoder(Encoder(config), Tokenizer.from_pretrained("minilm")).save_pretrained(folder)
    return str(folder)


def stage_dir(args, name: str, settings: dict) -> Path:
    """A stage's folder, named by a hash of its settings (a changed setting trains anew; a rerun resumes)."""
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    folder = args.work_dir / f"{name}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
    return folder


def loop_args(args, **kw) -> dict:
    base = dict(device=args.device, resume=True, checkpoint_every=100, log_every=10, seed=0)
    out = {**base, **kw}
    if args.quick:
        out.update(max_steps=2, checkpoint_every=1, batch_size=min(out.get("batch_size", 4), 4))
    return out


# ----------------------------------------------------------------------------- readers


def fid_recipe_settings(source: Path) -> tuple[dict, dict]:
    """(the `reprlab train fid` config a FiD checkpoint or model folder was trained with, the training state:
    step and total steps, or {} for a finished model)."""
    if (source / "trainer_state.json").is_file():  # a training-loop checkpoint
        state = json.loads((source / "trainer_state.json").read_text())
        return state["config"]["extra"]["config"], {"step": state["step"], "total_steps": state["total_steps"]}
    config = source.parent / "train_config.json"  # OUT/model: the loop's config is in OUT
    if not config.is_file():
        sys.exit(f"--fid-from {source}: no trainer_state.json there and no train_config.json beside it, so the "
                 "split it was trained on cannot be checked")
    return json.loads(config.read_text())["extra"]["config"], {}


def imported_fid_reader(args, files) -> tuple[Path, dict]:
    """``--fid-from``: the reader as a FiD model folder, after checking it never trained on a reported question."""
    import torch
    from safetensors.torch import load_model

    from reprlab.qa.fid import FidConfig, FidReader

    source = args.fid_from.resolve()
    trained, state = fid_recipe_settings(source)
    wanted = dict(eval_fraction=args.eval_fraction, dev_fraction=args.dev_fraction)
    found = dict(eval_fraction=trained["eval_fraction"], dev_fraction=trained["dev_fraction"])
    if found != wanted or not set(map(str, files.values())) <= set(trained["data"]):
        found["data"], wanted["data"] = sorted(trained["data"]), sorted(map(str, files.values()))
        sys.exit(f"--fid-from {source} was trained with {found}, this run reports on {wanted}")
    weights = source / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    info = {"from": str(source), "sha256": digest, **state, "recipe": trained}
    if not state:  # already a model folder
        return source, info
    folder = stage_dir(args, "fid-imported", {"from": str(source), "sha256": digest})
    if not (folder / "model").is_dir():
        torch.manual_seed(0)
        reader = FidReader.from_encoder(trained.get("model", "minilm"), FidConfig.from_dict(trained["fid"]))
        load_model(reader, str(weights))  # strict: every tensor of the reader, nothing else
        reader.save_pretrained(folder / "model")
    return folder / "model", info


def train_fid_reader(args, files) -> Path:
    from reprlab.qa.fid import FidConfig, FidTrainingConfig, run_fid

    if args.fid_from is not None:
        model, args.fid_info = imported_fid_reader(args, files)
        return model

    fid = FidConfig(passage_max_length=48 if args.quick else args.passage_max_length, answer_max_length=24,
                    decoder_layers=[0] if args.quick else None)
    passages = 2 if args.quick else args.fid_passages
    settings = dict(files=sorted(map(str, files.values())), fid=vars(fid), passages=passages,
                    epochs=args.fid_epochs, lr=args.fid_lr, batch=args.fid_batch_size, eval=args.eval_fraction,
                    dev=args.dev_fraction, quick=args.quick, encoder=args.encoder, bf16=args.fid_bf16)
    folder = stage_dir(args, "fid", settings)
    if not (folder / "model").is_dir():
        t0 = time.time()
        run_fid(FidTrainingConfig(output_dir=str(folder), data=[str(f) for f in files.values()], model=args.encoder,
                                  retriever="bm25", n_passages=passages, eval_passages=passages,
                                  eval_fraction=args.eval_fraction, dev_fraction=args.dev_fraction, evaluate="dev",
                                  fid=fid, **loop_args(args, epochs=args.fid_epochs, lr=args.fid_lr,
                                                       batch_size=args.fid_batch_size, warmup_ratio=0.1,
                                                       bf16=args.fid_bf16)))
        (folder / "seconds.json").write_text(json.dumps({"train_and_dev_eval": time.time() - t0}))
    return folder / "model"


def distant_examples(data, questions, ranked, k: int, negatives: int = 0) -> list[dict]:
    """SQuAD paragraphs: each question with every one of its top-k passages that holds a gold answer (whole word),
    and (``negatives``) up to that many of its top-k passages that hold none, highest-ranked first, as SQuAD 2.0
    unanswerable questions (the reader learns to point them at [CLS]). Questions whose answers are all yes/no give
    neither."""
    from reprlab.qa.teachers import passage_context

    paragraphs = []
    for q in questions:
        answers = [a for a in q.answers if a.strip().lower() not in ("yes", "no")]
        if not answers:
            continue
        left = negatives
        for d, _ in ranked[q.id][:k]:
            context = passage_context(data.corpus[d]["title"], data.corpus[d]["text"])
            found = (re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", context, re.IGNORECASE) for a in answers)
            m = next((m for m in found if m), None)
            if m:
                paragraphs.append({"context": context, "qas": [{"id": f"{q.id}|{d}", "question": q.question,
                                   "answers": [{"text": context[m.start(): m.end()], "answer_start": m.start()}]}]})
            elif left > 0:
                left -= 1
                paragraphs.append({"context": context, "qas": [{"id": f"{q.id}|{d}", "question": q.question,
                                                                "answers": [], "is_impossible": True}]})
    return paragraphs


def train_extractive_reader(args, files) -> Path:
    from reprlab.qa.open_qa import load_open_qa, rank_pool
    from reprlab.qa.reader import ReaderConfig
    from reprlab.qa.recipe import ReaderTrainingConfig, run_reader

    settings = dict(files=sorted(map(str, files.values())), passages=args.fid_passages, epochs=args.ext_epochs,
                    eval=args.eval_fraction, dev=args.dev_fraction, quick=args.quick, encoder=args.encoder,
                    bf16=args.bf16, **({"negatives": args.ext_negatives} if args.ext_negatives else {}))
    folder = stage_dir(args, "extractive", settings)
    if (folder / "model").is_dir():
        return folder / "model"
    articles = []
    for name, path in files.items():
        data = load_open_qa(path)
        train_q = data.split(args.eval_fraction, args.dev_fraction).train
        ranked = rank_pool("bm25", data.corpus, train_q, args.fid_passages)
        articles.append({"title": name, "paragraphs": distant_examples(data, train_q, ranked, args.fid_passages,
                                                                       args.ext_negatives)})
    squad = folder / "distant.json"
    squad.write_text(json.dumps({"version": "2.0" if args.ext_negatives else "1.1", "data": articles}))
    reader = ReaderConfig(max_length=256, stride=64, max_question_length=48)
    run_reader(ReaderTrainingConfig(output_dir=str(folder), data=[str(squad)], model=args.encoder, eval_fraction=0.0,
                                    evaluate=False, reader=reader,
                                    **loop_args(args, epochs=args.ext_epochs, batch_size=16, lr=1e-4, bf16=args.bf16)))
    return folder / "model"


# ----------------------------------------------------------------------------- retrievers


def scoring(args):
    from reprlab.qa.teachers import ScoringConfig

    return ScoringConfig(softmax=args.softmax, tokens=args.tokens, batch_size=2, bf16=args.bf16)


def distill(args, name: str, path: Path, reader: Path, kind: str) -> tuple[Path, dict]:
    from reprlab.qa.teachers import ScoringConfig
    from reprlab.retrieval.reader_distill import ReaderDistillConfig, run_reader_distill

    iterations = args.iterations if kind == "fid" else args.ext_iterations
    score = scoring(args) if kind == "fid" else ScoringConfig(signal=args.ext_signal, batch_size=2, bf16=args.bf16)
    temperature = args.ext_temperature if kind == "extractive" and args.ext_temperature else args.temperature
    config = dict(data=str(path), reader=str(reader), retriever=args.first_retriever, student=args.encoder,
                  iterations=2 if args.quick else iterations, candidates=3 if args.quick else args.candidates,
                  sample=2 if args.quick else args.sample, loss=args.loss, temperature=temperature,
                  passage_max_length=args.distill_passage_length, eval_fraction=args.eval_fraction,
                  dev_fraction=args.dev_fraction, ks=list(KS), scoring=score, max_questions=args.max_questions)
    folder = stage_dir(args, f"{name}-distill-{kind}", {k: str(v) for k, v in config.items()} | {
        "epochs": args.distill_epochs, "lr": args.distill_lr, "batch": args.distill_batch_size})
    t0 = time.time()
    result = run_reader_distill(ReaderDistillConfig(output_dir=str(folder), **config, **loop_args(
        args, epochs=args.distill_epochs, lr=args.distill_lr, batch_size=args.distill_batch_size, warmup_ratio=0.1,
        bf16=args.bf16)))
    info = {"recall": result.recall, "teacher_candidate_recall": result.teacher, "seconds_this_run": time.time() - t0,
            "folder": str(folder)}
    return result.model_dir, info


def train_dpr(args, name: str, path: Path) -> Path:
    from reprlab.qa.open_qa import load_open_qa, rank_pool
    from reprlab.retrieval.dpr import DprConfig, run_dpr
    from reprlab.text.examples import Passage, TrainingExample, write_examples

    settings = dict(data=str(path), epochs=args.dpr_epochs, eval=args.eval_fraction, dev=args.dev_fraction,
                    length=args.distill_passage_length, quick=args.quick, encoder=args.encoder, bf16=args.bf16)
    if args.max_questions:
        settings["max_questions"] = args.max_questions
    folder = stage_dir(args, f"{name}-dpr", settings)
    if (folder / "run" / "model").is_dir():
        return folder / "run" / "model"
    data = load_open_qa(path)
    train_q = data.split(args.eval_fraction, args.dev_fraction).train
    train_q = [q for q in train_q[: args.max_questions] if q.gold]  # the questions distillation trains on
    ranked = rank_pool("bm25", data.corpus, train_q, 30)

    def passage(d):
        return Passage(id=d, text=data.corpus[d]["text"], title=data.corpus[d]["title"])

    def negatives(q):  # BM25's top 30 without the gold; passages of the pool in order if BM25 matched none
        found = [d for d, _ in ranked[q.id] if d not in q.gold]
        return found or [d for d in list(data.corpus)[:10] if d not in q.gold]

    examples = [TrainingExample(q.question, [passage(d) for d in q.gold], [passage(d) for d in negatives(q)],
                                query_id=q.id) for q in train_q]
    write_examples(folder / "examples.jsonl", examples)
    run_dpr(DprConfig(output_dir=str(folder / "run"), examples=str(folder / "examples.jsonl"), model=args.encoder,
                      num_negatives=1, passage_max_length=args.distill_passage_length, query_max_length=64,
                      **loop_args(args, epochs=args.dpr_epochs, batch_size=32, lr=2e-5, bf16=args.bf16)))
    return folder / "run" / "model"


# ----------------------------------------------------------------------------- evaluation


def read_rows(args, reader, data, questions, rankings: dict, k: int) -> dict:
    """EM/F1 of the FiD reader reading each question's top-k passages of ``rankings``."""
    from reprlab.qa.fid import evaluate_fid
    from reprlab.qa.open_qa import reader_examples

    ranked = {q: [(d, 0.0) for d in r] for q, r in rankings.items()}
    return evaluate_fid(reader, reader_examples(questions, data.corpus, ranked, k), bf16=args.bf16)


def read_rows_extractive(args, reader, data, questions, rankings: dict, k: int) -> dict:
    """EM/F1 of the extractive reader: the best span over each question's top-k passages, each passage read alone
    with the question (``"<title>: <text>"``, as in its training and as a teacher)."""
    import torch

    from reprlab.qa.squad import squad_metrics
    from reprlab.qa.teachers import autocast, passage_context

    t0 = time.perf_counter()
    predictions = {}
    for lo in range(0, len(questions), 8):
        part = questions[lo: lo + 8]
        contexts = [[passage_context(data.corpus[d]["title"], data.corpus[d]["text"]) for d in rankings[q.id][:k]]
                    for q in part]
        with torch.inference_mode(), autocast(reader.device, args.bf16):
            answers = reader.answer_batch([q.question for q in part], contexts)
        predictions.update({q.id: a[0].text if a else "" for q, a in zip(part, answers)})
    metrics = squad_metrics({q.id: list(q.answers) for q in questions}, predictions)
    metrics.update(n=len(questions), seconds_per_question=(time.perf_counter() - t0) / max(1, len(questions)))
    return metrics


def probe(args, reader, data, questions) -> dict:
    """The paper's preliminary test: top-k by retriever score vs by the reader's attention score."""
    from reprlab.qa.fid import FidTeacher
    from reprlab.qa.open_qa import mean_recall, rank_pool

    n = 3 if args.quick else args.probe_candidates
    ranked = rank_pool(args.first_retriever, data.corpus, questions, n)
    teacher = FidTeacher(reader, scoring(args))
    scores = teacher.score_passages([q.question for q in questions],
                                    [[(data.corpus[d]["title"], data.corpus[d]["text"]) for d, _ in ranked[q.id]]
                                     for q in questions])
    by_retriever = {q.id: [d for d, _ in ranked[q.id]] for q in questions}
    by_reader = {q.id: [by_retriever[q.id][i] for i in np.argsort(-s, kind="stable")] for q, s in zip(questions, scores)}
    out = {}
    for k in args.probe_k:
        for name, ranking in (("retriever", by_retriever), ("attention", by_reader)):
            out[f"{name}@{k}"] = {**read_rows(args, reader, data, questions, ranking, k),
                                  **mean_recall(ranking, questions, [k])}
    return out


def recall_rows(args, data, questions, retrievers: dict) -> tuple[dict, dict]:
    from reprlab.qa.open_qa import mean_recall, rank_pool

    rows, rankings = {}, {}
    for name, spec in retrievers.items():
        ranked = rank_pool(str(spec), data.corpus, questions, max(max(KS), args.read_k))
        rankings[name] = {q: [d for d, _ in r] for q, r in ranked.items()}
        rows[name] = mean_recall(rankings[name], questions, KS)
    return rows, rankings


def paired_differences(rankings: dict, questions, base: str = "minilm", ks=(5,), resamples: int = 2000) -> dict:
    """Each retriever against ``base`` on the same questions: the mean per-question gold-recall difference at k,
    its 95% paired-bootstrap interval (questions resampled, seed 0), and the questions won / lost. One trained
    model per row, so this is the spread over questions, not over training seeds."""
    from reprlab.qa.open_qa import gold_recall

    judged = [q for q in questions if q.gold]
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(judged), size=(resamples, len(judged)))
    out = {}
    for name, ranking in rankings.items():
        if name == base or base not in rankings:
            continue
        for k in ks:
            diff = np.array([gold_recall(ranking[q.id], q.gold, k) - gold_recall(rankings[base][q.id], q.gold, k)
                             for q in judged])
            means = diff[draws].mean(axis=1)
            out.setdefault(name, {})[f"recall@{k}"] = {
                "difference": float(diff.mean()), "ci95": [float(np.quantile(means, 0.025)),
                                                           float(np.quantile(means, 0.975))],
                "won": int((diff > 0).sum()), "lost": int((diff < 0).sum())}
    return out


def row_key(item) -> tuple:
    group = item[0].rsplit("-iter", 1)[0]
    return (ROW_ORDER.index(group) if group in ROW_ORDER else len(ROW_ORDER), item[0])


def evaluate_dataset(args, name: str, path: Path, fid_model: Path | None, ext_model: Path | None, retrievers: dict,
                     recorded: dict) -> dict:
    """Recall of every retriever (``recorded``: rows the distillation recipe measured on the same questions, for
    the intermediate iterations), paired differences against MiniLM (and, with both teachers, the extractive-
    against the FiD-distilled retriever), the reader's EM/F1 with each retriever's passages, the preliminary test."""
    from reprlab.qa.fid import FidReader
    from reprlab.qa.open_qa import load_open_qa
    from reprlab.qa.reader import load_reader

    data = load_open_qa(path)
    questions = data.split(args.eval_fraction, args.dev_fraction)[args.side]
    out = {"questions": len(questions), "pool": len(data.corpus)}
    recall, rankings = recall_rows(args, data, questions, retrievers)
    out["recall"] = {**recall, **{k: v for k, v in recorded.items() if k not in recall}}
    out["recall"] = dict(sorted(out["recall"].items(), key=row_key))
    out["against_minilm"] = paired_differences(rankings, questions, ks=KS)
    fid_rows = sorted(r for r in rankings if r.startswith("distill-fid"))
    ext_rows = [r for r in rankings if r.startswith("distill-extractive")]
    if fid_rows and ext_rows:
        pair = {r: rankings[r] for r in (fid_rows[-1], *ext_rows)}
        out["extractive_against_fid"] = paired_differences(pair, questions, base=fid_rows[-1], ks=KS)
    k = 2 if args.quick else args.read_k
    read = questions[: args.read_questions] if args.read_questions else questions
    fid = FidReader.from_pretrained(fid_model) if fid_model and args.read_questions != 0 else None
    if args.read_questions != 0 and (fid if args.read_with == "fid" else ext_model) is not None:
        out["read_questions"], out["read_with"] = len(read), args.read_with
        if args.read_with == "fid":
            out["reader"] = {r: read_rows(args, fid, data, read, rankings[r], k) for r in rankings}
        else:
            extractive = load_reader(ext_model)
            out["reader"] = {r: read_rows_extractive(args, extractive, data, read, rankings[r], k) for r in rankings}
    if fid is not None and "probe" in args.stages:
        out["probe"] = probe(args, fid, data, read)
    return out


def needs_fid(args, stages: set) -> bool:
    """Whether this run builds (trains, or imports with --fid-from) the FiD reader: see the module docstring."""
    reads = "evaluate" in stages and args.read_questions != 0 and args.read_with == "fid"
    return bool({"fid", "probe", "distill-fid"} & stages) or reads or ("teachers" in stages and args.fid_from is not None)


def needs_extractive(args, stages: set) -> bool:
    reads = "evaluate" in stages and args.read_questions != 0 and args.read_with == "extractive"
    return bool({"extractive", "teachers", "distill-extractive"} & stages) or reads


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = common.parse(options(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import reprlab.qa  # noqa: F401  registers the teacher kinds

    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.encoder is None:
        args.encoder = tiny_encoder(args.work_dir / "tiny-encoder") if args.quick else "minilm"
    files = data_files(args)
    t0 = time.time()
    stages = set(args.stages)
    fid_model = train_fid_reader(args, files) if needs_fid(args, stages) else None
    ext_model = train_extractive_reader(args, files) if needs_extractive(args, stages) else None
    record = {"settings": common.settings(args), "side": args.side, "datasets": {}, "distillation": {}}
    if getattr(args, "fid_info", None):
        record["fid_reader"] = args.fid_info
    tag = "reader_distill" if args.side == "eval" else "reader_distill-dev"
    if "teachers" in stages:
        record["teachers_on_dev"] = teacher_table(args, files, fid_model, ext_model)
    for name, path in files.items():
        retrievers, recorded = {"bm25": "bm25", "minilm": args.encoder}, {}
        if "distill-fid" in args.stages:
            model, info = distill(args, name, path, fid_model, "fid")
            record["distillation"][f"{name}-fid"] = info
            done = sorted((k for k in info["recall"] if k != "iter-0"), key=lambda k: int(k.split("-")[1]))
            recorded.update({f"distill-fid-{it}": info["recall"][it][args.side] for it in done[:-1]})
            retrievers[f"distill-fid-{done[-1]}"] = Path(info["folder"]) / done[-1] / "retriever" / "model"
        if "distill-extractive" in args.stages:  # every iteration's retriever is evaluated in full
            model, info = distill(args, name, path, ext_model, "extractive")
            record["distillation"][f"{name}-extractive"] = info
            for it in sorted((k for k in info["recall"] if k != "iter-0"), key=lambda k: int(k.split("-")[1])):
                retrievers[f"distill-extractive-{it}"] = Path(info["folder"]) / it / "retriever" / "model"
        if "dpr" in args.stages:
            retrievers["dpr"] = train_dpr(args, name, path)
        if "evaluate" in args.stages:
            record["datasets"][name] = evaluate_dataset(args, name, path, fid_model, ext_model, retrievers, recorded)
        record["wall_seconds"] = time.time() - t0
        common.write_result(tag, record, args, argv)  # each dataset's rows as soon as they are done
    record["headline"] = headline(record) if record["datasets"] else {}
    record["wall_seconds"] = time.time() - t0
    written = common.write_result(tag, record, args, argv)
    if record["datasets"]:
        plot(record, common.result_path(tag, args).with_suffix(".png"))
    print(markdown(written))
    return written


if __name__ == "__main__":
    main()
