"""JAKET: joint pre-training of a knowledge-graph module and the language encoder.

Yu, Zhu, Yang and Zeng, "JAKET: Joint Pre-training of Knowledge Graph and Language Understanding",
AAAI 2022 (arXiv 2010.00796). No official code was released; this is our implementation.

The encoder is split into LM1 (lower layers) and LM2 (upper layers). The knowledge module
(:class:`reprlab.nn.kg.KnowledgeModule`, a relational graph-attention network) runs over the KG with
LM1's encodings of entity descriptions (the entity context memory, refreshed every N steps) and of
relation names as inputs; its entity states are added to LM1's output at the tokens of each entity
mention, and LM2 reads the fused sequence. Four losses train both: masked tokens and masked entities
(on LM2), entity categories and relation types (on the KM). Because entities and relations are
represented through their text, a trained model applies to a KG it has never seen.

* :mod:`.model`: the model, the losses, the memory, model folders;
* :mod:`.data`: batches (mentions to tokens, masking, sampled triples and entities);
* :mod:`.recipe`: ``reprlab pretrain jaket``;
* :mod:`.tasks`: fine-tuning and evaluation on link prediction, entity categories and relation types
  (``reprlab kg-eval``).
"""

from reprlab.pretrain.jaket.model import JaketModel, JaketSpec, load_jaket, save_jaket
from reprlab.pretrain.jaket.recipe import JaketConfig, JaketResult, run_jaket

__all__ = ["JaketConfig", "JaketModel", "JaketResult", "JaketSpec", "load_jaket", "run_jaket", "save_jaket"]
