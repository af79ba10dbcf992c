"""``reprlab score-passages``: a reader's relevance score for each question's retrieved passages, as a JSONL run.

    reprlab score-passages --reader runs/fid/model --data hotpot.jsonl --retriever bm25 --candidates 20 \\
        --out scores.jsonl [--questions train] [--softmax pre] [--tokens first] [--layers 0 1]

The teacher side of reader-to-retriever distillation (Izacard & Grave, ICLR 2021), on its own: the
questions of one side of the hash split (:mod:`reprlab.text.splits`) are searched in the file's
passage pool, the reader (FiD cross-attention, or an extractive reader's span / question-attention
scores: :mod:`reprlab.qa.teachers`) scores the top ``--candidates``, and the scores are written
atomically as a :mod:`reprlab.text.score_runs` file. When the questions have gold passages, the gold
recall of the teacher's ranking and of the retriever's among the candidates is printed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from reprlab.cli_format import print_table
from reprlab.qa.teachers import ScoringConfig
from reprlab.text.splits import EVAL_FRACTION, check_fractions
from reprlab.train.recipe import check, check_choice, option

SIDES = ("train", "dev", "eval", "all")


@dataclass
class ScorePassagesConfig:
    out: str = option(help="the JSONL run written")
    reader: str = option(help="reader folder: FiD (`reprlab train fid`) or extractive (`reprlab train reader`)")
    data: str = option(help="HotpotQA .jsonl or SQuAD v1.1 .json file: the questions and the passage pool")
    retriever: str = option("bm25", help="what finds the candidates: bm25, minilm or a model folder")
    candidates: int = option(20, help="top passages of the retriever scored per question")
    questions: str = option("train", choices=SIDES, help="side of the hash split scored (by question id)")
    eval_fraction: float = option(EVAL_FRACTION, help="share of the questions on the eval side")
    dev_fraction: float = option(0.0, help="share of the questions on the dev side")
    max_questions: int | None = option(None, help="score only the first N questions of the side")
    ks: list[int] = option(default_factory=lambda: [1, 2, 5, 10], help="recall cut-offs printed")
    scoring: ScoringConfig = option(default_factory=ScoringConfig, help="how the reader scores passages")

    def __post_init__(self):
        if isinstance(self.scoring, dict):
            self.scoring = ScoringConfig.from_dict(self.scoring)
        check(self.candidates >= 1, "candidates", f"must be at least 1, got {self.candidates}")
        check(self.max_questions is None or self.max_questions >= 1, "max_questions", "must be at least 1")
        check_choice(self.questions, SIDES, "questions")
        check_fractions(self.eval_fraction, self.dev_fraction)
        self.ks = [int(k) for k in self.ks]
        check(len(self.ks) > 0 and min(self.ks) >= 1, "ks", f"must be positive cut-offs, got {self.ks}")


def cmd_score_passages(args) -> None:
    from reprlab.cli.options import config_from_args
    from reprlab.errors import ReprlabError
    from reprlab.io import check_output
    from reprlab.qa.open_qa import gold_recall, load_open_qa, rank_pool
    from reprlab.qa.teachers import load_teacher, resolve_signal, teacher_kind
    from reprlab.retrieval.reader_distill.stages import score_candidates
    from reprlab.text.score_runs import write_score_run

    config: ScorePassagesConfig = config_from_args(args.options, args)
    check_output(config.out, "file")
    kind = teacher_kind(config.reader)
    signal = resolve_signal(kind, config.scoring)
    data = load_open_qa(config.data)
    parts = data.split(config.eval_fraction, config.dev_fraction)
    questions = data.questions if config.questions == "all" else parts[config.questions]
    questions = questions[: config.max_questions] if config.max_questions else questions
    if not questions:
        raise ReprlabError(f"{config.data}: the {config.questions} side has no questions")
    ranked = rank_pool(config.retriever, data.corpus, questions, config.candidates, show_progress=None)
    teacher = load_teacher(config.reader, config.scoring)
    records = score_candidates(teacher, questions, data.corpus, ranked, chunk=max(8, config.scoring.batch_size))
    provenance = {"teacher": config.reader, "kind": kind.name, "signal": signal,
                  "scoring": dataclasses.asdict(config.scoring), "retriever": config.retriever,
                  "candidates": config.candidates, "data": config.data, "questions": config.questions}
    write_score_run(config.out, records, provenance)
    gold = {q.id: q.gold for q in questions if q.gold}
    rows = []
    judged = [r for r in records if r.query_id in gold]
    rankings = (("retriever", lambda r: [p.id for p in r.passages]), (f"reader ({signal})", lambda r: r.ranking()))
    for name, ranking in rankings if judged else ():
        recall = {k: sum(gold_recall(ranking(r), gold[r.query_id], k) for r in judged) / len(judged)
                  for k in config.ks}
        rows.append({"ranking": name, **{f"R@{k}": f"{v:.3f}" for k, v in recall.items()}})
    if args.json:
        print(json.dumps({"out": config.out, "questions": len(records), "gold_recall": rows}))
        return
    print(f"{len(records)} questions scored -> {config.out}")
    if rows:
        found = max(len(r.passages) for r in records)  # fewer than --candidates when the pool is smaller
        print(f"gold recall among the {found} candidates ({len(judged)} questions with gold passages):")
        print_table(rows, ["ranking", *[f"R@{k}" for k in config.ks]])


def add_commands(sub) -> None:
    from reprlab.cli.options import add_config_options

    p = sub.add_parser("score-passages", help="a reader's relevance scores of retrieved passages, as a JSONL run "
                                              "(the teacher of `reprlab train reader-distill`)")
    options = add_config_options(p, ScorePassagesConfig)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_score_passages, options=options)
