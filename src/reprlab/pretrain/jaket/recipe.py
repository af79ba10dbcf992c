"""``reprlab pretrain jaket``: joint pre-training of the knowledge module and the language encoder.

The run reads a KG folder (:func:`reprlab.text.kg.read_kg`), text with entity mentions (a JSONL of
:func:`reprlab.text.kg.write_linked_text`, or, by default, the KG's own descriptions linked by
:func:`reprlab.text.kg.link_mentions`) and optionally entity categories; fills the entity context
memory with LM1's encodings of every description and relation name (from ``--memory-cache`` when it
holds the same LM1's vectors), refreshes it every ``--memory-refresh-every`` steps, and trains the
four losses of :mod:`reprlab.pretrain.jaket.model` on the shared loop. The memory and its version are
buffers of the model, so they are in every checkpoint and a resumed run continues exactly.
The model folder (``OUT/model``) holds ``model.safetensors`` + ``jaket.json`` + the tokenizer, and the
language module alone as a sentence-encoder folder in ``OUT/model/encoder``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError, safe_open

from reprlab.encoder import Encoder, SentenceEncoder
from reprlab.errors import ConfigError, DataFormatError
from reprlab.hub import read_sentence_config, resolve_model_path
from reprlab.io import atomic_open
from reprlab.nn.kg import COMPOSITIONS
from reprlab.pretrain.jaket.data import JaketCollate
from reprlab.pretrain.jaket.model import JaketModel, JaketSpec, encode_texts, refresh_memory, save_jaket
from reprlab.text.kg import KnowledgeGraph, link_mentions, read_categories, read_kg, read_linked_text
from reprlab.text.tokenizer import Tokenizer
from reprlab.train.loop import TrainConfig, train
from reprlab.train.recipe import (RecipeConfig, RecipeResult, check, check_choice, finished, loop, option,
                                  read_metrics, recipe_config, register)

logger = logging.getLogger("reprlab")
LOSSES = ("mlm", "entity", "category", "relation")


@recipe_config
class JaketConfig(RecipeConfig):
    kg: str = option(help="knowledge-graph folder (entity2text.txt, relation2text.txt, train/dev/test.tsv)")
    output_dir: str = option(help="run folder (the model in OUT/model)", flag="--out")
    text: str | None = option(None, help="JSONL of texts with entity mentions (default: the KG's descriptions, "
                                         "linked to their neighbours by lemma)")
    categories: str | None = option(None, help="TSV entity<TAB>category for the category loss (none: no such loss)")
    descriptions: str = option("entity2text.txt", help="entity description file in the KG folder")
    model: str = option("minilm", help="model folder or 'minilm'")
    lm1_layers: int = option(3, help="encoder layers below the knowledge fusion (LM1); the rest are LM2")
    km_dim: int = option(128, help="width of the knowledge module")
    km_layers: int = option(2, help="relational graph-attention layers")
    km_heads: int = option(2, help="attention heads per layer")
    composition: str = option("sub", choices=tuple(COMPOSITIONS), help="how a neighbour meets its relation")
    max_length: int = option(64, help="word pieces per text")
    desc_max_length: int = option(32, help="word pieces per description in the memory")
    memory_refresh_every: int = option(500, help="steps between re-encodings of the memory by LM1 (0: never)")
    memory_batch_size: int = option(128, help="descriptions per batch when the memory is encoded")
    memory_cache: str | None = option(None, help="safetensors of the starting LM1's description vectors: read "
                                                 "when it matches, else written (saves the first encoding)")
    mlm_budget: float = option(0.15, help="share of the other tokens chosen for the masked-token loss")
    entity_mask_prob: float = option(0.3, help="share of mentions masked for the masked-entity loss")
    relation_batch: int = option(64, help="training triples per step for the relation-type loss")
    category_batch: int = option(64, help="entities per step for the category loss")
    loss_weights: list[float] = option(default_factory=lambda: [1.0, 1.0, 1.0, 1.0],
                                       help="weights of the losses mlm, entity, category, relation")
    km_lr: float = option(1e-3, help="learning rate of the knowledge module and the heads (fresh weights)")
    train: TrainConfig = loop(lr=5e-5, batch_size=16, warmup_ratio=0.06)

    def __post_init__(self):
        check_choice(self.composition, tuple(COMPOSITIONS), "composition")
        for name in ("lm1_layers", "km_dim", "km_layers", "km_heads", "max_length", "desc_max_length",
                     "memory_batch_size"):
            check(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        check(self.km_dim % self.km_heads == 0, "km_heads", f"must divide km_dim {self.km_dim}, got {self.km_heads}")
        check(self.memory_refresh_every >= 0, "memory_refresh_every", "must be >= 0 (0: never)")
        check(0.0 <= self.mlm_budget < 1.0, "mlm_budget", f"must be in [0, 1), got {self.mlm_budget}")
        check(0.0 <= self.entity_mask_prob <= 1.0, "entity_mask_prob", f"must be in [0, 1], got {self.entity_mask_prob}")
        check(self.relation_batch >= 0 and self.category_batch >= 0, "relation_batch", "batches must be >= 0")
        self.loss_weights = [float(w) for w in self.loss_weights]
        check(len(self.loss_weights) == 4 and all(math.isfinite(w) and w >= 0 for w in self.loss_weights),
              "loss_weights", f"give 4 non-negative weights (mlm, entity, category, relation), got {self.loss_weights}")
        check(any(w > 0 for w in self.loss_weights), "loss_weights",
              f"at least one weight must be positive (all zero trains nothing), got {self.loss_weights}")
        check(math.isfinite(self.km_lr) and self.km_lr > 0, "km_lr", f"must be positive, got {self.km_lr}")

    def spec(self, kg: KnowledgeGraph, categories: list[str]) -> JaketSpec:
        return JaketSpec(self.lm1_layers, self.km_dim, self.km_layers, self.km_heads, self.composition,
                         kg.num_entities, kg.num_relations, categories, self.desc_max_length, kg.digest())


@dataclass
class JaketResult(RecipeResult):
    texts: int = 0
    mentions: int = 0
    memory_version: int = 0

    def summary(self) -> str:
        return f"{self.texts} texts, {self.mentions} mentions, memory version {self.memory_version}; " + super().summary()


def _cache_key(model: str, spec: JaketSpec, kg: KnowledgeGraph) -> dict[str, str]:
    return {"model": str(model), "lm1_layers": str(spec.lm1_layers), "desc_max_length": str(spec.desc_max_length),
            "texts_sha256": kg.digest()}


class MemoryRefresh:
    """Fills the entity context memory before the first step and re-encodes it every ``every`` steps.

    The memory is a set of model buffers, so a checkpoint holds it with its version; on resume the
    restored memory is kept (``memory_version > 0``) and the schedule continues from the step.
    """

    def __init__(self, tokenizer: Tokenizer, kg: KnowledgeGraph, every: int, batch_size: int,
                 cache: str | None = None, cache_key: dict | None = None):
        self.tokenizer, self.kg, self.every, self.batch_size = tokenizer, kg, every, batch_size
        self.cache, self.cache_key = cache, cache_key or {}
        self.refreshes = 0

    def _first_vectors(self, model: JaketModel):
        if not self.cache:
            return None
        path = Path(self.cache)
        if self.check_cache(path):
            with safe_open(str(path), framework="pt") as f:
                if f.metadata() == self.cache_key:
                    logger.info(f"jaket: memory from the cache {path}")
                    return f.get_tensor("entities"), f.get_tensor("relations")
            logger.warning(f"jaket: {path} holds another model's vectors; encoding anew")
        ml = model.spec.desc_max_length
        vectors = (encode_texts(model, self.tokenizer, self.kg.entity_text, ml, self.batch_size, "memory: entities"),
                   encode_texts(model, self.tokenizer, self.kg.relation_text, ml, self.batch_size, "memory: relations"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb", encoding=None) as f:
            f.write(_safetensors_bytes({"entities": vectors[0], "relations": vectors[1]}, self.cache_key))
        return vectors

    @staticmethod
    def check_cache(path: Path) -> bool:
        """Whether the cache file exists; one that is a folder or not safetensors is an error."""
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path} is not a file (the safetensors cache of description vectors)",
                              field="memory_cache")
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                f.metadata()
        except (SafetensorError, OSError) as exc:
            raise DataFormatError(f"not a safetensors cache of description vectors ({exc}); delete it to "
                                  "encode anew", str(path)) from None
        return True

    def on_train_start(self, state, model) -> None:
        if int(model.memory_version) == 0:
            refresh_memory(model, self.tokenizer, self.kg.entity_text, self.kg.relation_text, state.step,
                           self.batch_size, vectors=self._first_vectors(model))

    def on_step_end(self, state, model, metrics) -> None:
        if self.every and state.step % self.every == 0:
            refresh_memory(model, self.tokenizer, self.kg.entity_text, self.kg.relation_text, state.step,
                           self.batch_size)
            self.refreshes += 1
        metrics["memory_version"] = int(model.memory_version)


def _safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def _optimizer(model: JaketModel, config: JaketConfig) -> torch.optim.Optimizer:
    """AdamW: the encoder at ``lr``, the fresh knowledge module and heads at ``km_lr``; no decay on biases/norms."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            fresh = not name.startswith("encoder.") and not name.startswith("mlm_head.")
            groups.setdefault((fresh, p.ndim < 2 or "norm" in name.lower()), []).append(p)
    wd = config.train.weight_decay
    return torch.optim.AdamW([{"params": ps, "lr": config.km_lr if fresh else config.train.lr,
                               "weight_decay": 0.0 if no_decay else wd}
                              for (fresh, no_decay), ps in sorted(groups.items())])


def category_labels(kg: KnowledgeGraph, categories: dict[str, str]) -> tuple[list[str], dict[int, int]]:
    """(sorted category names, {entity index: category index}) for the entities that have training triples:
    entities seen only in dev/test never lend their category to pre-training."""
    names = sorted(set(categories.values()))
    index = {c: i for i, c in enumerate(names)}
    seen = set(kg.split("train")[:, [0, 2]].ravel().tolist())
    return names, {kg.entity_index[e]: index[c] for e, c in categories.items() if kg.entity_index[e] in seen}


@register("pretrain jaket", JaketConfig, help="JAKET: joint pre-training of a knowledge-graph module and the encoder")
def run_jaket(config: JaketConfig, callbacks: Sequence = (), stop_after: int | None = None) -> JaketResult:
    kg = read_kg(config.kg, config.descriptions)
    kg.split("train", nonempty=True)  # the graph and the relation loss read the training triples
    texts = read_linked_text(config.text, kg) if config.text else link_mentions(kg)
    names, labels = category_labels(kg, read_categories(config.categories, kg)) if config.categories else ([], {})
    if config.categories and not labels:
        raise DataFormatError("no entity of the training triples has a category here, so the category loss would "
                              "be empty (leave --categories out for no such loss)", str(config.categories))
    folder = resolve_model_path(config.model)
    tokenizer = Tokenizer.from_pretrained(folder)
    torch.manual_seed(config.train.seed)  # fresh KM and heads start alike in every run of a config
    spec = config.spec(kg, names)
    model = JaketModel(Encoder.from_pretrained(folder), spec)
    model.set_graph(kg.split("train"))
    collate = JaketCollate(tokenizer, config.max_length, kg.split("train"), labels, config.mlm_budget,
                           config.entity_mask_prob, config.relation_batch, config.category_batch)
    weights = dict(zip(LOSSES, config.loss_weights))
    logger.info(f"jaket: {kg.num_entities} entities, {kg.num_relations} relations, {len(kg.split('train'))} "
                f"training triples; {len(texts)} texts with {sum(len(t.mentions) for t in texts)} mentions; "
                f"{len(labels)} entities with one of {len(names)} categories")

    def loss_fn(m, batch):
        total, parts = m(batch, weights)
        return total, {f"loss_{k}": float(v.detach()) for k, v in parts.items()}

    if config.memory_cache:
        MemoryRefresh.check_cache(Path(config.memory_cache))  # before the run folder is made
    refresh = MemoryRefresh(tokenizer, kg, config.memory_refresh_every, config.memory_batch_size,
                            config.memory_cache, _cache_key(str(folder), spec, kg))
    state = train(model, texts, collate, loss_fn, config.loop_config("jaket"), [refresh, *callbacks],
                  optimizer=_optimizer(model, config), stop_after=stop_after)
    out = Path(config.output_dir)
    done = finished(state)
    if done and state.rank == 0:
        model.to("cpu")
        save_jaket(model, tokenizer, out / "model")
        st = read_sentence_config(folder)
        SentenceEncoder(model.encoder, tokenizer, pooling=st["pooling"], normalize=st["normalize"],
                        max_length=st["max_length"]).save_pretrained(out / "model" / "encoder")
    return JaketResult(out, out / "model" if done else None, state.step, read_metrics(out), texts=len(texts),
                       mentions=sum(len(t.mentions) for t in texts), memory_version=int(model.memory_version))
