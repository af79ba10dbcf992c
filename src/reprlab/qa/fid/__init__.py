"""Fusion-in-Decoder: a generative reader over many passages, and its cross-attention as a relevance teacher.

Izacard & Grave, "Distilling Knowledge from Reader to Retriever for Question Answering", ICLR 2021
(arXiv:2012.04584; official code facebookresearch/FiD), on the FiD reader of Izacard & Grave, EACL
2021. Each (question, passage) pair is encoded alone by our encoder; the decoder, warm-started from
the encoder's layers with fresh cross-attention (BERT2BERT, Rothe et al., TACL 2020), attends over
all passages at once and generates the answer. How much its cross-attention rests on a passage is
that passage's relevance score, the teacher signal of :mod:`reprlab.retrieval.reader_distill`.

* :mod:`~reprlab.qa.fid.layers`: causal self-attention, cross-attention (fused and eager paths; the
  eager one returns the pre-softmax scores), the decoder layer, the tied head;
* :mod:`~reprlab.qa.fid.model`: :class:`FidConfig`, :class:`FidReader` (inputs, forward, answers,
  folders);
* :mod:`~reprlab.qa.fid.generate`: greedy and beam search, answers mapped back to the passages' text;
* :mod:`~reprlab.qa.fid.scores`: the cross-attention passage scores (:class:`FidTeacher`);
* :mod:`~reprlab.qa.fid.recipe`: ``reprlab train fid`` and the teacher kind ``fid``.
"""

from reprlab.qa.fid.model import FidBatch, FidConfig, FidReader, fid_input  # noqa: F401
from reprlab.qa.fid.recipe import (  # noqa: F401
    FidTrainingConfig,
    FidTrainingResult,
    evaluate_fid,
    fine_tune_fid,
    run_fid,
)
from reprlab.qa.fid.scores import FidTeacher, aggregate_cross_attention  # noqa: F401
