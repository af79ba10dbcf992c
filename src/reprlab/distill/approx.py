"""Approximate computing for transformers (AxFormer): accuracy-driven greedy pruning of a fine-tuned model.

Nagarajan, Sen, Stevens & Raghunathan, "AxFormer: Accuracy-driven Approximation of Transformers for
Faster, Smaller and more Accurate NLP Models" (ICLR 2021 submission; published as "Specialized
Transformers: Faster, Smaller and more Accurate NLP Models"); code
https://github.com/amrnag/Specialized-Transformers.
A model fine-tuned for one task carries parts the task does not need, and some that hurt it. The
search visits the layers from the last to the first and, in each, tries to remove (1) the whole FFN
block, else, when that came close (loss < ``finer_gate`` x the current loss), its neuron groups one by
one; then (2) the whole attention block, else, when close, its heads one by one. A removal is kept
when the held-out loss does not get worse (the paper: strictly lower than the current loss;
``tolerance`` > 0 also accepts removals that keep the loss within (1 + tolerance) x the unpruned loss).
Layers are visited last to first, so the input of the layer being searched never changes and is
computed once; each candidate runs only the layers from there on.

The authors' code masks weights; here the plan is applied by **physically removing** them
(:func:`apply_plan`): narrower FFN Linear layers, attention with fewer heads, and layers whose
attention or FFN block is absent (then x = LayerNorm(x), as in the paper's pruned layers). The sizes
go into ``EncoderConfig.layer_heads`` / ``layer_intermediate`` and so round-trip through
``save_pretrained`` / ``from_pretrained``. (The paper's other approximations, e.g. its top-k "hard"
attention and reduced precision, are not implemented here.)

>>> plan = search_plan(model, texts, objective, ApproxConfig())      # doctest: +SKIP
>>> small = apply_plan(model, plan)                                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from reprlab.cli_format import format_table
from reprlab.encoder import Encoder, EncoderConfig, Layer, SentenceEncoder
from reprlab.errors import ConfigError, ModelLoadError
from reprlab.io import atomic_write_json
from reprlab.logs import progress
from reprlab.retrieval.pipeline import bm25_for_corpus
from reprlab.text.beir import doc_text, load_beir
from reprlab.text.splits import split
from reprlab.train.recipe import RecipeConfig, RecipeResult, check, option, recipe_config, register

logger = logging.getLogger("reprlab")


# ----------------------------------------------------------------------------- physical removal


def neuron_groups(width: int, groups: int) -> list[list[int]]:
    """Split FFN neurons 0..width-1 into ``groups`` contiguous groups (the last may be shorter)."""
    size = max(1, math.ceil(width / groups))
    return [list(range(start, min(start + size, width))) for start in range(0, width, size)]


def prune_layer(layer: Layer, config: EncoderConfig, index: int, keep_heads: Sequence[int] | None,
                keep_neurons: Sequence[int] | None) -> Layer:
    """A new layer with only ``keep_heads`` (None = no attention block) and ``keep_neurons`` (None = no FFN).

    ``config``/``index`` describe ``layer`` (its attention kind, heads and FFN width); head and neuron
    indices refer to ``layer``'s current ones. Kept weights are copied exactly.
    """
    n_heads = 0 if keep_heads is None else len(keep_heads)
    width = 0 if keep_neurons is None else len(keep_neurons)
    if keep_heads is not None and not keep_heads:
        raise ConfigError(f"layer {index}: keep at least one head, or remove the attention block (keep_heads=None)")
    if keep_neurons is not None and not keep_neurons:
        raise ConfigError(f"layer {index}: keep at least one FFN neuron, or remove the block (keep_neurons=None)")
    one = config.replace(num_layers=1, layer_attention=[config.attention_for(index)], layer_heads=[n_heads],
                         layer_intermediate=[width])
    ref = next(layer.parameters())
    new = Layer(one, 0).to(device=ref.device, dtype=ref.dtype)
    new.attn_norm.load_state_dict(layer.attn_norm.state_dict())
    new.ffn_norm.load_state_dict(layer.ffn_norm.state_dict())
    with torch.no_grad():
        if n_heads:
            old_heads = config.heads_for(index)
            if list(keep_heads) == list(range(old_heads)):
                new.attn.load_state_dict(layer.attn.state_dict())
            else:
                hs = config.hidden_size // config.num_heads
                rows = torch.cat([torch.arange(h * hs, (h + 1) * hs) for h in keep_heads]).to(ref.device)
                for name in ("query", "key", "value"):
                    getattr(new.attn, name).weight.copy_(getattr(layer.attn, name).weight[rows])
                    getattr(new.attn, name).bias.copy_(getattr(layer.attn, name).bias[rows])
                new.attn.out.weight.copy_(layer.attn.out.weight[:, rows])
                new.attn.out.bias.copy_(layer.attn.out.bias)
        if width:
            idx = torch.as_tensor(list(keep_neurons), device=ref.device)
            new.ffn.up.weight.copy_(layer.ffn.up.weight[idx])
            new.ffn.up.bias.copy_(layer.ffn.up.bias[idx])
            new.ffn.down.weight.copy_(layer.ffn.down.weight[:, idx])
            new.ffn.down.bias.copy_(layer.ffn.down.bias)
    new.train(layer.training)
    return new


@dataclass
class ApproxPlan:
    """What the search removed, by layer (indices of the searched model's heads / neuron groups)."""

    num_layers: int
    neuron_groups: int = 12
    ffn_removed: list[int] = field(default_factory=list)
    attention_removed: list[int] = field(default_factory=list)
    heads_removed: dict[int, list[int]] = field(default_factory=dict)
    groups_removed: dict[int, list[int]] = field(default_factory=dict)
    base_loss: float | None = None
    final_loss: float | None = None
    history: list[dict] = field(default_factory=list)  # every candidate tried: element, loss, accepted

    def keep(self, config: EncoderConfig, index: int) -> tuple[list[int] | None, list[int] | None]:
        """(heads kept or None, neurons kept or None) of layer ``index`` of a model with ``config``."""
        heads = config.heads_for(index)
        width = config.intermediate_for(index)
        keep_heads = None
        if heads and index not in self.attention_removed:
            gone = set(self.heads_removed.get(index, []))
            keep_heads = [h for h in range(heads) if h not in gone]
        keep_neurons = None
        if width and index not in self.ffn_removed:
            gone_groups = set(self.groups_removed.get(index, []))
            keep_neurons = [n for g, members in enumerate(neuron_groups(width, self.neuron_groups))
                            if g not in gone_groups for n in members]
        return keep_heads, keep_neurons

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["heads_removed"] = {str(k): v for k, v in self.heads_removed.items()}
        d["groups_removed"] = {str(k): v for k, v in self.groups_removed.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ApproxPlan":
        d = dict(d)
        d["heads_removed"] = {int(k): list(v) for k, v in d.get("heads_removed", {}).items()}
        d["groups_removed"] = {int(k): list(v) for k, v in d.get("groups_removed", {}).items()}
        return cls(**d)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ApproxPlan":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise ModelLoadError(f"{path}: not an approximation plan ({exc})") from exc

    def summary(self) -> str:
        heads = sum(len(v) for v in self.heads_removed.values())
        groups = sum(len(v) for v in self.groups_removed.values())
        return (f"FFN blocks removed {sorted(self.ffn_removed)}, attention blocks removed "
                f"{sorted(self.attention_removed)}, {heads} heads and {groups} FFN neuron groups removed")


def apply_plan(model: Encoder | SentenceEncoder, plan: ApproxPlan) -> Encoder | SentenceEncoder:
    """A copy of ``model`` with the plan's heads, neurons and blocks physically removed."""
    enc = model.encoder if isinstance(model, SentenceEncoder) else model
    c = enc.config
    if plan.num_layers != c.num_layers:
        raise ConfigError(f"the plan is for {plan.num_layers} layers but the model has {c.num_layers}")
    layers, heads, widths = [], [], []
    for i, layer in enumerate(enc.layers):
        keep_heads, keep_neurons = plan.keep(c, i)
        layers.append(prune_layer(layer, c, i, keep_heads, keep_neurons))
        heads.append(0 if keep_heads is None else len(keep_heads))
        widths.append(0 if keep_neurons is None else len(keep_neurons))
    new_enc = _rebuild(enc, layers, heads, widths)
    if isinstance(model, SentenceEncoder):
        return SentenceEncoder(new_enc, model.tokenizer, pooling=copy.deepcopy(model.pooling),
                               normalize=model.normalize, max_length=model.max_length)
    return new_enc


def _rebuild(enc: Encoder, layers: list[Layer], heads: list[int], widths: list[int]) -> Encoder:
    c = enc.config
    full_heads = all(h == c.num_heads for h in heads)
    full_widths = all(w == c.intermediate_size for w in widths)
    config = c.replace(layer_heads=None if full_heads else heads, layer_intermediate=None if full_widths else widths)
    layers_backup = enc.layers
    enc.layers = nn.ModuleList()  # do not deep-copy the old layers
    try:
        new = copy.deepcopy(enc)
    finally:
        enc.layers = layers_backup
    new.config = config
    new.layers = nn.ModuleList(layers)
    return new


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- the greedy search


@dataclass
class ApproxConfig:
    """Settings of the greedy search.

    ``tolerance``: 0 keeps a removal only if the held-out loss falls (the paper); t > 0 also keeps it
    while the loss stays within (1 + t) x the unpruned model's loss (a bounded total degradation).
    ``finer_gate``: a rejected block is searched at finer granularity (neuron groups / heads) only
    when its removal gave a loss < finer_gate x the current loss (1.1 in the paper's code).
    ``min_improved_fraction``: also require this fraction of held-out samples to be no worse than
    under the unpruned model (the paper's code uses more than half; 0 turns the check off).
    """

    tolerance: float = option(0.0, help="keep a removal while the held-out loss stays within (1 + t) x the "
                                        "unpruned loss (0: only if it falls, the paper)")
    finer_gate: float = option(1.1, help="search a rejected block at finer granularity when its removal gave a "
                                         "loss below this factor x the current loss")
    neuron_groups: int = option(12, help="groups the FFN neurons of a layer are removed in")
    min_improved_fraction: float = option(0.0, help="also require this share of held-out samples no worse "
                                                    "than unpruned (0: off)")
    prune_ffn: bool = option(True, help="try removing whole FFN blocks")
    prune_neurons: bool = option(True, help="try removing FFN neuron groups")
    prune_attention: bool = option(True, help="try removing whole attention blocks")
    prune_heads: bool = option(True, help="try removing attention heads")
    batch_size: int = option(64, help="held-out texts per forward pass")

    def __post_init__(self):
        if self.tolerance < 0:
            raise ConfigError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.neuron_groups < 1:
            raise ConfigError(f"neuron_groups must be >= 1, got {self.neuron_groups}")
        if not 0.0 <= self.min_improved_fraction <= 1.0:
            raise ConfigError(f"min_improved_fraction must be in [0, 1], got {self.min_improved_fraction}")


Objective = Callable[[torch.Tensor], torch.Tensor]  # vectors (N, D) of the held-out texts -> per-sample losses (M,)


class _HeldOut:
    """Held-out texts tokenized once and batched by length; runs the encoder from any layer on."""

    def __init__(self, model: SentenceEncoder, texts: Sequence[str], max_lengths: Sequence[int], batch_size: int):
        if getattr(model.pooling, "needs_hidden_states", False):
            raise ConfigError("approximate computing supports the parameter-free poolings (mean, cls, max), "
                              f"not {type(model.pooling).__name__}")
        tok = model.tokenizer
        rows: list[list[int]] = []
        for length in sorted(set(max_lengths)):
            idx = [i for i, L in enumerate(max_lengths) if L == length]
            batch = tok([texts[i] for i in idx], max_length=length)
            for r, i in enumerate(idx):
                n = int(batch.attention_mask[r].sum())
                rows.append((i, batch.input_ids[r, :n].tolist()))
        rows.sort(key=lambda r: -len(r[1]))
        self.order = [i for i, _ in rows]
        self.batches = []
        for start in range(0, len(rows), batch_size):
            chunk = [ids for _, ids in rows[start:start + batch_size]]
            T = len(chunk[0])
            ids = torch.full((len(chunk), T), tok.pad_id or 0, dtype=torch.long)
            mask = torch.zeros(len(chunk), T, dtype=torch.bool)
            for r, seq in enumerate(chunk):
                ids[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = True
            self.batches.append((ids.to(model.device), mask.to(model.device)))
        self.model = model

    @torch.no_grad()
    def inputs_of(self, layers: Sequence[Layer], upto: int) -> list[torch.Tensor]:
        """The input of layer ``upto`` for every batch, through ``layers[:upto]``."""
        out = []
        for ids, mask in self.batches:
            x = self.model.encoder.embed(ids)
            for layer in layers[:upto]:
                x, _ = layer(x, mask)
            out.append(x)
        return out

    @torch.no_grad()
    def vectors_from(self, inputs: list[torch.Tensor], layers: Sequence[Layer]) -> torch.Tensor:
        """Run ``layers`` on the cached ``inputs``; pooled (normalised) vectors in the texts' order."""
        parts = []
        for x, (_, mask) in zip(inputs, self.batches):
            for layer in layers:
                x, _ = layer(x, mask)
            v = self.model.pooling(x, mask, None)
            parts.append(torch.nn.functional.normalize(v, dim=-1) if self.model.normalize else v)
        stacked = torch.cat(parts).float()
        out = torch.empty_like(stacked)
        out[torch.as_tensor(self.order, device=stacked.device)] = stacked
        return out


def search_plan(
    model: SentenceEncoder,
    texts: Sequence[str],
    objective: Objective,
    config: ApproxConfig | None = None,
    max_lengths: Sequence[int] | int | None = None,
    show_progress: bool | None = None,
) -> ApproxPlan:
    """Greedy accuracy-driven search (the paper's order) over ``model``; returns the plan.

    ``objective(vectors)`` maps the (N, D) vectors of ``texts`` to per-sample held-out losses; its mean
    is the loss the search minimises. ``max_lengths`` truncates each text (one int for all).
    """
    config = config or ApproxConfig()
    enc = model.encoder
    c = enc.config
    L = c.num_layers
    was_training = model.training
    model.eval()
    if max_lengths is None or isinstance(max_lengths, int):
        max_lengths = [max_lengths or model.max_length] * len(texts)
    held = _HeldOut(model, texts, max_lengths, config.batch_size)
    original = list(enc.layers)
    current = list(enc.layers)  # layers as decided so far (pruned copies from the top down)
    plan = ApproxPlan(num_layers=L, neuron_groups=config.neuron_groups)

    def run(i: int, layer_i: Layer, inputs: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
        losses = objective(held.vectors_from(inputs, [layer_i] + current[i + 1:])).detach().float().cpu()
        return float(losses.mean()), losses

    inputs = held.inputs_of(original, 0)
    base_loss, base_samples = run(0, current[0], inputs)
    plan.base_loss = best = base_loss
    budget = base_loss * (1.0 + config.tolerance)
    logger.info(f"approx: base held-out loss {base_loss:.4f} over {len(base_samples)} samples")

    def accept(loss: float, samples: torch.Tensor) -> bool:
        ok = loss < best or (config.tolerance > 0 and loss <= budget)
        if ok and config.min_improved_fraction > 0:
            ok = float((samples <= base_samples + 1e-6).float().mean()) > config.min_improved_fraction
        return ok

    softmax_ok = lambda i: c.attention_for(i) == "softmax"  # noqa: E731  (partial heads need softmax)
    bar = progress(total=L, desc="approx search", unit="layer", show=show_progress)
    for i in reversed(range(L)):
        inputs = held.inputs_of(original, i)
        keep_heads, keep_neurons = plan.keep(c, i)

        def trial(element: str, heads, neurons) -> tuple[bool, float]:
            nonlocal best
            candidate = prune_layer(original[i], c, i, heads, neurons)
            loss, samples = run(i, candidate, inputs)
            ok = accept(loss, samples)
            plan.history.append({"layer": i, "element": element, "loss": round(loss, 6), "accepted": ok})
            if ok:
                best = loss
                current[i] = candidate
            return ok, loss

        if config.prune_ffn and keep_neurons is not None:
            ok, loss = trial("ffn", keep_heads, None)
            if ok:
                plan.ffn_removed.append(i)
                keep_neurons = None
            elif config.prune_neurons and loss < config.finer_gate * best:
                groups = neuron_groups(c.intermediate_for(i), config.neuron_groups)
                for g, members in enumerate(groups):
                    gone = set(members)
                    trial_neurons = [n for n in keep_neurons if n not in gone]
                    if not trial_neurons:
                        break
                    ok, _ = trial(f"ffn_group_{g}", keep_heads, trial_neurons)
                    if ok:
                        plan.groups_removed.setdefault(i, []).append(g)
                        keep_neurons = trial_neurons
        if config.prune_attention and keep_heads is not None:
            ok, loss = trial("attention", None, keep_neurons)
            if ok:
                plan.attention_removed.append(i)
                keep_heads = None
            elif config.prune_heads and softmax_ok(i) and loss < config.finer_gate * best:
                for h in range(c.heads_for(i)):
                    trial_heads = [x for x in keep_heads if x != h]
                    if not trial_heads:
                        break
                    ok, _ = trial(f"head_{h}", trial_heads, keep_neurons)
                    if ok:
                        plan.heads_removed.setdefault(i, []).append(h)
                        keep_heads = trial_heads
        current[i] = prune_layer(original[i], c, i, keep_heads, keep_neurons)
        bar.update(1)
        bar.set_postfix(loss=f"{best:.4f}")
    bar.close()
    plan.final_loss = best
    model.train(was_training)
    logger.info(f"approx: {plan.summary()}; held-out loss {base_loss:.4f} -> {best:.4f}")
    return plan


# ----------------------------------------------------------------------------- retrieval objective + recipe


def contrastive_objective(num_queries: int, relevant: Sequence[Sequence[int]], scale: float = 20.0) -> Objective:
    """Per-query NLL of its relevant documents among all held-out documents.

    The vectors are ordered [queries (num_queries), documents]; ``relevant[q]`` lists the document
    positions (0-based among the documents) relevant to query q. The loss of q is
    -log(sum over relevant softmax(scale * q . d)).
    """
    rel = [list(r) for r in relevant]
    if len(rel) != num_queries or any(not r for r in rel):
        raise ConfigError("every held-out query needs at least one relevant document")

    def objective(vectors: torch.Tensor) -> torch.Tensor:
        q, d = vectors[:num_queries], vectors[num_queries:]
        logits = scale * q @ d.T  # (Q, N)
        target = torch.full_like(logits, float("-inf"))
        for row, docs in enumerate(rel):
            target[row, docs] = logits[row, docs]
        return torch.logsumexp(logits, dim=-1) - torch.logsumexp(target, dim=-1)

    return objective


@recipe_config
class ApproxRecipeConfig(RecipeConfig):
    """``reprlab compress approx``: search a fine-tuned retriever on held-out training queries.

    ``data`` is a BEIR folder; the held-out queries are the dev slice (``dev_fraction``, by
    :mod:`reprlab.text.splits`) of the judged queries of ``split`` (never the test split), or exactly
    ``dev_queries``. The documents are their relevant ones plus ``negatives`` BM25 negatives each.
    """

    model: str = option(help="fine-tuned model folder or 'minilm'")
    data: str = option(help="BEIR folder whose training queries are held out for the search")
    output_dir: str = option(help="output folder (model, plan.json)", flag="--out")
    split: str = option("train", help="qrels split the held-out queries come from (never 'test')")
    dev_fraction: float = option(0.2, aliases=("--heldout-fraction",),
                                 help="share of the split's judged queries held out for the search")
    dev_queries: list[str] | None = option(None, cli=False, help="explicit held-out query ids")
    negatives: int = option(2, help="BM25 negatives per held-out query")
    query_max_length: int = option(64, help="query tokens")
    passage_max_length: int = option(256, help="passage tokens")
    scale: float = option(20.0, help="1 / temperature of the contrastive objective")
    search: ApproxConfig = option(default_factory=ApproxConfig, help="the greedy search")

    def __post_init__(self):
        check(self.split != "test", "split", "approximate computing searches on held-out *training* queries; "
                                             "do not use the test split (give split=train)")
        if self.dev_queries is None:
            check(0.0 < self.dev_fraction < 1.0, "dev_fraction", f"must be in (0, 1), got {self.dev_fraction}")
        check(self.negatives >= 0, "negatives", f"must be >= 0, got {self.negatives}")
        if isinstance(self.search, dict):
            self.search = ApproxConfig(**self.search)


@dataclass
class ApproxResult(RecipeResult):
    plan: ApproxPlan | None = None
    parameters_before: int = 0
    parameters_after: int = 0
    dev_queries: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"approx: model -> {self.model_dir}, plan -> {self.output_dir / 'plan.json'}"

    def report(self) -> str:
        """The plan per layer and the parameter count, for the terminal."""
        plan, rows = self.plan, []
        for i in range(plan.num_layers):
            heads, groups = plan.heads_removed.get(i, []), plan.groups_removed.get(i, [])
            attention = "removed" if i in plan.attention_removed else \
                f"heads {','.join(map(str, heads))} removed" if heads else "kept"
            ffn = "removed" if i in plan.ffn_removed else \
                f"{len(groups)}/{plan.neuron_groups} neuron groups removed" if groups else "kept"
            rows.append({"layer": i, "attention": attention, "ffn": ffn})
        before, after = self.parameters_before, self.parameters_after
        return (format_table(rows, ["layer", "attention", "ffn"]) + "\n"
                f"parameters: {before:,} -> {after:,} ({100 * (before - after) / max(1, before):.1f}% fewer); "
                f"held-out loss {plan.base_loss:.4f} -> {plan.final_loss:.4f} on {len(self.dev_queries)} queries")


def heldout_task(data, query_ids: Sequence[str], negatives: int) -> tuple[list[str], list[str], list[list[int]]]:
    """(query texts, document texts, relevant document positions per query) for the held-out objective."""
    doc_ids: list[str] = []
    where: dict[str, int] = {}

    def add(d: str) -> int:
        if d not in where:
            where[d] = len(doc_ids)
            doc_ids.append(d)
        return where[d]

    relevant = [[add(d) for d, r in sorted(data.qrels[q].items()) if r > 0 and d in data.corpus] for q in query_ids]
    if negatives:
        bm25 = bm25_for_corpus(data.corpus)
        _, found = bm25.search([data.queries[q] for q in query_ids], negatives + 10)
        for q, row in zip(query_ids, found):
            picked = [d for d in row if d is not None and data.qrels[q].get(d, 0) <= 0][:negatives]
            for d in picked:
                add(d)
    keep = [k for k, r in enumerate(relevant) if r]
    queries = [data.queries[query_ids[k]] for k in keep]
    return queries, [doc_text(data.corpus[d]) for d in doc_ids], [relevant[k] for k in keep]


@register("compress approx", ApproxRecipeConfig,
          help="AxFormer: greedy removal of FFN/attention blocks, heads and neurons on held-out queries")
def run_approx(config: ApproxRecipeConfig, callbacks: Sequence = (), stop_after: int | None = None,
               show_progress: bool | None = None) -> ApproxResult:
    """Search ``config.model`` on held-out training queries, remove what the plan says, save the result.

    Writes ``<output_dir>/model`` (a sentence-encoder folder whose config records the per-layer sizes),
    ``<output_dir>/plan.json`` and ``<output_dir>/dev_queries.json``. The search trains nothing and is
    deterministic, so ``callbacks`` and ``stop_after`` have nothing to act on (a rerun gives the same plan).
    """
    model = SentenceEncoder.from_pretrained(config.model)
    data = load_beir(config.data, split=config.split)
    judged = sorted(data.judged_queries())
    if not judged:
        raise ConfigError(f"{config.data}: split {config.split!r} has no judged queries to hold out")
    held = config.dev_queries or split(judged, dev_fraction=config.dev_fraction).dev
    if not held:
        raise ConfigError(f"the dev slice of {len(judged)} queries is empty; raise dev_fraction", field="dev_fraction")
    unknown = [q for q in held if q not in data.qrels]
    if unknown:
        raise ConfigError(f"held-out queries {unknown[:5]} have no judgements in split {config.split!r}")
    queries, docs, relevant = heldout_task(data, held, config.negatives)
    objective = contrastive_objective(len(queries), relevant, config.scale)
    texts = queries + docs
    lengths = [config.query_max_length] * len(queries) + [config.passage_max_length] * len(docs)
    logger.info(f"approx: {len(queries)} held-out queries, {len(docs)} documents")
    plan = search_plan(model, texts, objective, config.search, max_lengths=lengths, show_progress=show_progress)
    small = apply_plan(model, plan)
    out = Path(config.output_dir)
    small.save_pretrained(out / "model")
    plan.save(out / "plan.json")
    atomic_write_json(out / "dev_queries.json", list(held))
    return ApproxResult(out, out / "model", 0, [], plan, count_parameters(model.encoder),
                        count_parameters(small.encoder), list(held))
