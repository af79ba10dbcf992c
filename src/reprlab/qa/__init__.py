"""Question answering: the extractive reader, Block Skim, SQuAD/HotpotQA data and EM/F1."""

from reprlab.qa.block_skim import BlockSkimConfig, BlockSkimReader, run_block_skim_training  # noqa: F401
from reprlab.qa.reader import (  # noqa: F401
    Answer,
    Reader,
    ReaderConfig,
    ReaderTrainingConfig,
    ReaderTrainingResult,
    evaluate_reader,
    run_reader_training,
)
from reprlab.qa.squad import (  # noqa: F401
    QAExample,
    hash_split,
    load_hotpotqa_answers,
    load_qa_file,
    load_squad,
    squad_metrics,
)
