"""Multi-hop dense retrieval (MDR): retrieve a passage, re-encode the question with it, retrieve again.

Xiong, Li, Iyer, Du, Lewis, Wang, Mehdad, Yih, Riedel, Kiela, Oğuz, "Answering Complex Open-Domain
Questions with Multi-Hop Dense Retrieval", ICLR 2021 (https://github.com/facebookresearch/multihop_dense_retrieval).
One encoder embeds the question (hop-1 query), the question followed by a retrieved passage (hop-2
query) and the passages; training is a softmax NLL per hop over the passages of the batch plus hard
negatives, and inference is a beam search whose chains are ranked by the sum of the two hops' scores.

The package, one concern per module (each says where it follows or departs from the paper's code):

* :mod:`~reprlab.retrieval.mdr.model`: hop-2 queries, :class:`MDRModel`, the two-hop loss
  (:func:`mdr_loss`), the :class:`MemoryBank` of the second stage, the training batches
  (:class:`MDRCollate`) and the model folder (:func:`load_mdr`);
* :mod:`~reprlab.retrieval.mdr.search`: the beam search (:func:`multihop_search`), its :class:`Chain`
  ranking, BM25 fusion (:class:`SparseFusion`, our extension) and index folders;
* :mod:`~reprlab.retrieval.mdr.evaluate`: the paper's chain metrics on a side of the split
  (:func:`evaluate_mdr`, :func:`evaluate_multihop` for ``reprlab evaluate --multihop``);
* :mod:`~reprlab.retrieval.mdr.recipe`: hard-negative mining (:func:`mine_negatives`) and the recipe
  ``reprlab train mdr`` (:class:`MDRConfig`, :func:`run_mdr_training`).

>>> result = run_mdr_training(MDRConfig(data="hotpot.jsonl", output_dir="runs/mdr"))      # doctest: +SKIP
>>> model = SentenceEncoder.from_pretrained(result.model_dir)                              # doctest: +SKIP
>>> chains = multihop_search(model, ["Which government position ...?"], index, corpus)   # doctest: +SKIP
>>> chains[0][0].passages, chains[0][0].score                                              # doctest: +SKIP
(('Kiss and Tell (1945 film)', 'Shirley Temple'), 1.42)
"""

from reprlab.retrieval.mdr.evaluate import (
    DEFAULT_KS,
    MultiHopEvalConfig,
    chain_metrics,
    evaluate_chains,
    evaluate_mdr,
    evaluate_multihop,
    evaluate_single_hop,
    question_sides,
)
from reprlab.retrieval.mdr.model import (
    SETTINGS_FILE,
    MDRCollate,
    MDRExample,
    MDRModel,
    MemoryBank,
    PassageTable,
    hop2_query,
    load_mdr,
    mdr_loss,
    mdr_scores,
    mdr_settings,
    save_mdr,
    separator_of,
)
from reprlab.retrieval.mdr.recipe import NEGATIVE_SOURCES, MDRConfig, MDRResult, mine_negatives, run_mdr_training
from reprlab.retrieval.mdr.search import (
    Chain,
    SparseFusion,
    chains_from_ranking,
    format_chains,
    index_corpus,
    multihop_search,
    rank_chains,
    search_index_folder,
)

__all__ = [
    "DEFAULT_KS", "NEGATIVE_SOURCES", "SETTINGS_FILE",
    "Chain", "MDRCollate", "MDRConfig", "MDRExample", "MDRModel", "MDRResult", "MemoryBank", "MultiHopEvalConfig",
    "PassageTable", "SparseFusion",
    "chain_metrics", "chains_from_ranking", "evaluate_chains", "evaluate_mdr", "evaluate_multihop",
    "evaluate_single_hop", "format_chains", "hop2_query", "index_corpus", "load_mdr", "mdr_loss", "mdr_scores",
    "mdr_settings", "mine_negatives", "multihop_search", "question_sides", "rank_chains", "run_mdr_training",
    "save_mdr", "search_index_folder", "separator_of",
]
