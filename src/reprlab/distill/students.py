"""Student encoders made from a teacher: by taking some of its layers, or from a smaller config.

Layer selection initialises a shallower student with a subset of the teacher's layers, as
DistilBERT (Sanh et al., 2019, "DistilBERT, a distilled version of BERT", every other layer) and
PKD (Sun et al., EMNLP 2019) do: ``student_from_layers(minilm, [0, 2, 4])`` is a 3-layer MiniLM whose
embeddings and layers are copies of the teacher's. ``student_from_config`` builds a student of any
size (narrower, fewer heads) with the teacher's tokenizer and pooling; where the embedding widths
agree the embeddings are copied, otherwise everything is initialised fresh. A narrow student keeps
the teacher's word table with ``embedding_size`` (e.g. ``config:hidden_size=192,embedding_size=384,...``
for a 384-wide teacher): the copied embeddings feed a fresh ``384 -> 192`` projection. Both return a
model of the teacher's own type (:class:`~reprlab.encoder.Encoder` or :class:`~reprlab.encoder.SentenceEncoder`).

A student spec string (what ``--student`` takes) names either:

* ``layers:0,2,4``: the teacher's layers 0, 2 and 4, in that order;
* ``every:2``: every second layer starting at 0 (``layers:0,2,4`` for a 6-layer teacher);
* ``config:hidden_size=256,num_layers=3,num_heads=4,intermediate_size=1024``: a fresh student
  from the teacher's config with these fields changed (``tiny`` and ``minilm_l6`` name sizes too,
  e.g. ``config:tiny``);
* ``auto:3`` (``run_distillation`` only, it needs texts): the 3 layers, kept in order, whose student
  agrees best with the teacher on a sample of the unlabelled training texts (:func:`select_layers`:
  mean cosine between student and teacher embeddings), no labels involved.

>>> teacher = SentenceEncoder.from_pretrained("minilm")          # doctest: +SKIP
>>> student = build_student(teacher, "layers:0,2,4")              # doctest: +SKIP
>>> student.encoder.config.num_layers                             # doctest: +SKIP
3
"""

from __future__ import annotations

import copy
import itertools
from typing import Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.encoder import Encoder, EncoderConfig, SentenceEncoder
from reprlab.errors import ConfigError

M = TypeVar("M", Encoder, SentenceEncoder)


def _encoder_of(model: Encoder | SentenceEncoder) -> Encoder:
    if isinstance(model, SentenceEncoder):
        return model.encoder
    if isinstance(model, Encoder):
        return model
    raise ConfigError(f"a teacher must be an Encoder or a SentenceEncoder, not {type(model).__name__}")


def _with_encoder(teacher: M, encoder: Encoder) -> M:
    """A model of the teacher's type around ``encoder`` (same tokenizer, pooling, normalisation)."""
    if isinstance(teacher, Encoder):
        return encoder
    pooling = copy.deepcopy(teacher.pooling)
    return SentenceEncoder(encoder, teacher.tokenizer, pooling=pooling, normalize=teacher.normalize,
                           max_length=teacher.max_length)


def _subset(values, layers: Sequence[int]):
    return None if values is None else [values[i] for i in layers]


def student_from_layers(teacher: M, layers: Sequence[int]) -> M:
    """A student whose embeddings and ``layers`` (teacher layer indices, in order) copy the teacher's.

    The teacher is left untouched; the student's weights are independent copies.
    """
    enc = _encoder_of(teacher)
    n = enc.config.num_layers
    layers = [int(i) for i in layers]
    if not layers:
        raise ConfigError("a student needs at least one layer: give e.g. layers 0,2,4")
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ConfigError(f"student layers {bad} do not exist: the teacher has layers 0..{n - 1}")
    c = enc.config
    config = c.replace(num_layers=len(layers), layer_attention=_subset(c.layer_attention, layers),
                       layer_heads=_subset(c.layer_heads, layers),
                       layer_intermediate=_subset(c.layer_intermediate, layers))
    student = copy.deepcopy(enc)  # copies embeddings, pooler and every buffer with the teacher's dtype/device
    student.config = config
    student.layers = nn.ModuleList(student.layers[i] for i in layers)
    return _with_encoder(teacher, student)


def student_from_config(teacher: M, config: EncoderConfig, copy_embeddings: bool = True) -> M:
    """A freshly initialised student of ``config`` with the teacher's tokenizer and pooling.

    With ``copy_embeddings`` and equal embedding widths (``embedding_size or hidden_size`` on both
    sides) the word/position/type embeddings and their LayerNorm are copied from the teacher
    (positions up to the shorter of the two tables). The projection to the hidden size, if any, is
    copied when the teacher has one of the same shape, and is fresh otherwise.
    """
    enc = _encoder_of(teacher)
    if config.vocab_size != enc.config.vocab_size:
        raise ConfigError(f"the student's vocab_size {config.vocab_size} differs from the teacher's "
                          f"{enc.config.vocab_size}: they must share the tokenizer")
    student = Encoder(config).to(enc.device)
    src, dst = enc.embeddings, student.embeddings
    if copy_embeddings and src.word.embedding_dim == dst.word.embedding_dim:
        dst.word.weight.data.copy_(src.word.weight.data)
        P = min(dst.position.weight.shape[0], src.position.weight.shape[0])
        dst.position.weight.data[:P].copy_(src.position.weight.data[:P])
        if dst.token_type.weight.shape == src.token_type.weight.shape:
            dst.token_type.weight.data.copy_(src.token_type.weight.data)
        dst.norm.load_state_dict(src.norm.state_dict())
        same_projection = src.project is not None and dst.project is not None
        if same_projection and src.project.weight.shape == dst.project.weight.shape:
            dst.project.load_state_dict(src.project.state_dict())
    return _with_encoder(teacher, student)


_NAMED_SIZES = {"tiny": EncoderConfig.tiny, "minilm_l6": EncoderConfig.minilm_l6}


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_student(teacher: M, spec: str) -> M:
    """A student from a spec string: ``layers:0,2,4``, ``every:2`` or ``config:field=value,...``."""
    kind, _, rest = spec.partition(":")
    enc = _encoder_of(teacher)
    try:
        if kind == "layers":
            return student_from_layers(teacher, [int(x) for x in rest.split(",") if x.strip()])
        if kind == "every":
            step = int(rest)
            if step < 1:
                raise ValueError
            return student_from_layers(teacher, list(range(0, enc.config.num_layers, step)))
    except ValueError as exc:
        raise ConfigError(f"bad student spec {spec!r}: {kind} takes integers, e.g. layers:0,2,4 or every:2") from exc
    if kind == "config":
        fields: dict = {}
        base = enc.config
        for part in filter(None, (p.strip() for p in rest.split(","))):
            if "=" not in part:
                if part not in _NAMED_SIZES:
                    raise ConfigError(f"bad student spec {spec!r}: {part!r} is neither field=value nor one of "
                                      f"{', '.join(_NAMED_SIZES)}")
                base = _NAMED_SIZES[part](vocab_size=enc.config.vocab_size)
                continue
            key, value = part.split("=", 1)
            fields[key.strip()] = _parse_value(value.strip())
        try:
            config = base.replace(**fields)
        except TypeError as exc:
            raise ConfigError(f"bad student spec {spec!r}: {exc}") from exc
        return student_from_config(teacher, config)
    raise ConfigError(f"bad student spec {spec!r}: give layers:0,2,4, every:2 or config:hidden_size=256,...")


@torch.no_grad()
def select_layers(teacher: SentenceEncoder, texts: Sequence[str], num_layers: int, max_length: int = 128,
                  batch_size: int = 32) -> list[tuple[tuple[int, ...], float]]:
    """Every choice of ``num_layers`` teacher layers (in order), ranked by agreement with the teacher.

    Agreement is the mean cosine between the student's and the teacher's (pooled) embeddings of
    ``texts``; returns ``[(layers, score), ...]`` best first. Students sharing a prefix of layers
    share its computation.
    """
    n = teacher.encoder.config.num_layers
    if not 1 <= num_layers <= n:
        raise ConfigError(f"num_layers must be in 1..{n}, got {num_layers}")
    if getattr(teacher.pooling, "needs_hidden_states", False):
        raise ConfigError("select_layers supports the parameter-free poolings (mean, cls, max)")
    was_training = teacher.training
    teacher.eval()
    enc = teacher.encoder
    batches = [teacher.tokenize(list(texts[i:i + batch_size]), max_length).to(enc.device)
               for i in range(0, len(texts), batch_size)]
    masks = [b.attention_mask.bool() for b in batches]

    def pooled(states):
        out = [teacher.pooling(x, m, None) for x, m in zip(states, masks)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    cache: dict[tuple[int, ...], list[torch.Tensor]] = {(): [enc.embed(b.input_ids) for b in batches]}

    def states(prefix: tuple[int, ...]) -> list[torch.Tensor]:
        if prefix not in cache:
            cache[prefix] = [enc.layers[prefix[-1]](x, m)[0] for x, m in zip(states(prefix[:-1]), masks)]
        return cache[prefix]

    target = pooled(states(tuple(range(n))))
    ranked = []
    for layers in itertools.combinations(range(n), num_layers):  # lexicographic order
        for key in list(cache):  # a prefix that is not this subset's is never needed again
            if key != layers[: len(key)]:
                del cache[key]
        ranked.append((layers, float((pooled(states(layers)) * target).sum(-1).mean())))
    teacher.train(was_training)
    return sorted(ranked, key=lambda item: -item[1])
