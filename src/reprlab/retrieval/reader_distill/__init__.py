"""Reader-to-retriever distillation: a dense retriever trained from question-answer pairs alone.

Izacard & Grave, "Distilling Knowledge from Reader to Retriever for Question Answering", ICLR 2021
(arXiv:2012.04584; official code facebookresearch/FiD). A reader that reads many passages knows which
ones it used: its attention over the passages (FiD's cross-attention; or, beyond the paper, an
extractive reader's span and attention scores, :mod:`reprlab.qa.teachers`) is a relevance label, and
the retriever is trained to reproduce it over its own top candidates, iteration after iteration.

* :mod:`~reprlab.retrieval.reader_distill.losses`: KL (the paper's), MSE and max-margin objectives;
* :mod:`~reprlab.retrieval.reader_distill.stages`: iteration folders and their manifests, the score
  stage, the training batches;
* :mod:`~reprlab.retrieval.reader_distill.recipe`: ``reprlab train reader-distill``.

The reader is reached through the teacher registry of :mod:`reprlab.qa.teachers` (a FiD folder is
recognised once :mod:`reprlab.qa` is imported, as ``reprlab.recipes`` and the CLI do), so this
package imports no other method.
"""

from reprlab.retrieval.reader_distill.losses import (  # noqa: F401
    LOSSES,
    distillation_loss,
    kl_distillation,
    margin_distillation,
    mse_distillation,
)
from reprlab.retrieval.reader_distill.recipe import (  # noqa: F401
    ReaderDistillConfig,
    ReaderDistillResult,
    run_reader_distill,
)
