"""Question answering: the extractive reader, Block Skim, the long-context reader, the Fusion-in-Decoder reader,
SQuAD/HotpotQA data and EM/F1.

Importing the package registers the reader kinds (:func:`load_reader` opens a Block Skim folder as
one), the teacher kinds of :mod:`reprlab.qa.teachers` (extractive, FiD) and the recipes ``train reader``,
``train long-reader`` and ``train fid``.
"""

from reprlab.qa.block_skim import BlockSkimConfig, BlockSkimReader  # noqa: F401
from reprlab.qa.fid import FidConfig, FidReader, FidTrainingConfig, run_fid  # noqa: F401
from reprlab.qa.long_reader import (  # noqa: F401
    LongReaderConfig,
    LongReaderTrainingConfig,
    LongReaderTrainingResult,
    load_long_reader,
    run_long_reader_training,
)
from reprlab.qa.reader import Answer, Reader, ReaderConfig, evaluate_reader, load_reader  # noqa: F401
from reprlab.qa.recipe import (  # noqa: F401
    ReaderTrainingConfig,
    ReaderTrainingResult,
    run_block_skim_training,
    run_reader,
    run_reader_training,
)
from reprlab.qa.squad import (  # noqa: F401
    QAExample,
    hotpotqa_examples,
    load_hotpotqa_answers,
    load_qa_file,
    load_squad,
    squad_metrics,
)
