"""The Fusion-in-Decoder reader: each passage encoded alone, one decoder over all of them.

Izacard & Grave, "Leveraging Passage Retrieval with Generative Models for Open Domain Question
Answering", EACL 2021 (the FiD reader), as used by "Distilling Knowledge from Reader to Retriever
for Question Answering", ICLR 2021 (arXiv:2012.04584; official code facebookresearch/FiD). For a
question and n passages:

1. every pair becomes one text, ``"question: <q> title: <t> context: <c>"``, cut to
   ``passage_max_length`` tokens, and is encoded **alone** by our :class:`~reprlab.encoder.Encoder`
   (B*n sequences: the cost is linear in n);
2. the n encoder outputs are concatenated into one memory (B, n*L, H);
3. a Transformer decoder with cross-attention over that memory generates the answer token by
   token (teacher forcing in training; greedy or beam search at inference).

No pretrained sequence-to-sequence model can be downloaded here, so the decoder is warm-started
from the encoder's own layers with fresh cross-attention (BERT2BERT, Rothe et al., TACL 2020; see
:mod:`reprlab.qa.fid.layers`); decoder inputs are embedded by the encoder's embeddings and the
output projection is tied to the same word table (:class:`~reprlab.qa.fid.layers.LMHead`). The
answer starts after ``[CLS]`` and ends with ``[SEP]``.

A folder holds ``config.json`` + ``model.safetensors`` (the encoder, HF BERT layout: it loads as an
encoder, e.g. to start a retriever from), ``decoder.safetensors`` (decoder layers and head),
``fid_config.json`` and the tokenizer files.

>>> reader = FidReader.from_encoder("minilm", FidConfig(decoder_layers=[0, 1]))   # doctest: +SKIP
>>> reader.answer_batch(["who wrote it?"], [[("Emma", "Emma is a novel by Jane Austen.")]])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from reprlab.encoder import Encoder
from reprlab.errors import ConfigError, ModelLoadError, ReprlabError, config_from_dict
from reprlab.io import atomic_dir
from reprlab.qa.fid.layers import DecoderLayer, LMHead
from reprlab.text.tokenizer import Tokenizer
from reprlab.train.recipe import check, option

logger = logging.getLogger("reprlab")

FID_CONFIG_FILE = "fid_config.json"
DECODER_FILE = "decoder.safetensors"
IGNORE = -100  # label of padding positions
MAX_BEAMS = 64  # beam search holds every passage's cross-attention keys and values once per beam


def fid_input(question: str, title: str, text: str) -> str:
    """The text FiD encodes for one (question, passage) pair (the official code's format)."""
    return f"question: {question} title: {title} context: {text}"


@dataclass
class FidConfig:
    """The reader's shape and its input/output lengths (saved as ``fid_config.json``)."""

    decoder_layers: list[int] | None = option(None, help="encoder layers copied into the decoder, in order "
                                                          "(default: all of them)")
    passage_max_length: int = option(160, help="tokens of each 'question: .. title: .. context: ..' input")
    answer_max_length: int = option(24, help="answer tokens: targets are cut there, generation stops there")
    num_beams: int = option(1, help="beams at inference (1 = greedy)")

    def __post_init__(self):
        check(self.passage_max_length >= 8, "passage_max_length", f"must be at least 8, got {self.passage_max_length}")
        check(self.answer_max_length >= 1, "answer_max_length", f"must be at least 1, got {self.answer_max_length}")
        check(1 <= self.num_beams <= MAX_BEAMS, "num_beams", f"must be 1..{MAX_BEAMS} (the passages' keys and values "
              f"are held once per beam), got {self.num_beams}")
        if self.decoder_layers is not None:
            self.decoder_layers = [int(i) for i in self.decoder_layers]
            check(len(self.decoder_layers) > 0 and min(self.decoder_layers) >= 0, "decoder_layers",
                  f"must name at least one encoder layer (>= 0), got {self.decoder_layers}")

    @classmethod
    def from_dict(cls, d: dict) -> "FidConfig":
        return config_from_dict(cls, d)


class FidBatch(NamedTuple):
    """Tokenized inputs of B questions with n passage slots each."""

    input_ids: torch.Tensor  # (B, n, L)
    attention_mask: torch.Tensor  # (B, n, L): 1 = a real token of that slot's input
    passage_mask: torch.Tensor  # (B, n) bool: False = an empty slot (a question with fewer passages)
    texts: list[list[str]] | None = None  # the input strings, for mapping answers back to text
    offsets: torch.Tensor | None = None  # (B, n, L, 2) character spans in ``texts``

    def memory_mask(self) -> torch.Tensor:
        """(B, n*L) bool: the memory positions the decoder may attend to."""
        B, n, L = self.input_ids.shape
        return (self.attention_mask.bool() & self.passage_mask[:, :, None]).reshape(B, n * L)

    def to(self, device) -> "FidBatch":
        return self._replace(input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                             passage_mask=self.passage_mask.to(device))


class FidOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None
    cross_scores: list[torch.Tensor] | None = None  # per decoder layer, (B, nh, T, n*L) pre-softmax


class FidReader(nn.Module):
    """Encoder + decoder + tied head; see the module docstring.

    ``forward(batch, decoder_input_ids, labels=None, output_scores=False) -> FidOutput``.
    """

    def __init__(self, encoder: Encoder, tokenizer: Tokenizer, config: FidConfig | None = None,
                 decoder: Sequence[DecoderLayer] | None = None):
        super().__init__()
        ec = encoder.config
        if ec.embedding_size not in (None, ec.hidden_size) or ec.num_memory_tokens:
            raise ConfigError("FiD needs an encoder whose word embeddings have the hidden size and no memory tokens")
        self.encoder, self.tokenizer = encoder, tokenizer
        self.config = config or FidConfig()
        if self.config.passage_max_length > ec.max_position_embeddings:
            raise ConfigError(f"passage_max_length {self.config.passage_max_length} exceeds the encoder's "
                              f"{ec.max_position_embeddings} positions", field="passage_max_length")
        if self.config.answer_max_length + 1 > ec.max_position_embeddings:  # [CLS] + the answer in the decoder
            raise ConfigError(f"answer_max_length {self.config.answer_max_length} does not fit the encoder's "
                              f"{ec.max_position_embeddings} positions (with [CLS])", field="answer_max_length")
        layers = self.config.decoder_layers or list(range(ec.num_layers))
        if max(layers) >= ec.num_layers:
            raise ConfigError(f"decoder_layers {layers} names a layer the {ec.num_layers}-layer encoder lacks",
                              field="decoder_layers")
        self.decoder = nn.ModuleList(decoder if decoder is not None else [DecoderLayer(ec) for _ in layers])
        self.lm_head = LMHead(ec)
        self.bos_id, self.eos_id, self.pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id

    @classmethod
    def from_encoder(cls, name_or_path: str | Path, config: FidConfig | None = None) -> "FidReader":
        """A fresh reader on a pretrained encoder (``minilm`` or a folder): the decoder layers are copies of
        the encoder layers ``config.decoder_layers`` with fresh cross-attention (BERT2BERT)."""
        from reprlab.hub import resolve_model_path

        folder = resolve_model_path(name_or_path)
        encoder = Encoder.from_pretrained(folder)
        config = config or FidConfig()
        layers = config.decoder_layers or list(range(encoder.config.num_layers))
        if max(layers) >= encoder.config.num_layers:
            raise ConfigError(f"decoder_layers {layers} names a layer the {encoder.config.num_layers}-layer encoder "
                              "lacks", field="decoder_layers")
        decoder = [DecoderLayer.from_encoder_layer(encoder.config, encoder.layers[i]) for i in layers]
        return cls(encoder, Tokenizer.from_pretrained(folder), config, decoder)

    @property
    def device(self) -> torch.device:
        return self.lm_head.bias.device

    # ------------------------------------------------------------------------------------ inputs

    def featurize(self, questions: Sequence[str], passages: Sequence[Sequence[tuple[str, str]]],
                  n_passages: int | None = None, offsets: bool = False) -> FidBatch:
        """Tokenize each question with each of its (title, text) passages into a :class:`FidBatch`.

        Slots are padded to ``n_passages`` (default: the most any question has); an empty slot holds
        ``[CLS] [SEP]`` (so the encoder never sees an all-padding row) and is masked out of the memory.
        """
        if len(questions) != len(passages):
            raise ReprlabError(f"{len(questions)} questions but {len(passages)} passage lists")
        n = n_passages or max((len(p) for p in passages), default=0)
        if n < 1:
            raise ReprlabError("FiD needs at least one passage per question")
        texts = [[fid_input(q, t, c) for t, c in ps[:n]] + [""] * (n - len(ps[:n]))  # "" -> [CLS] [SEP]
                 for q, ps in zip(questions, passages)]
        flat = [t for row in texts for t in row]
        batch = self.tokenizer(flat, max_length=self.config.passage_max_length, return_offsets=offsets)
        B, L = len(questions), batch.input_ids.shape[1]
        present = torch.tensor([[i < len(ps) for i in range(n)] for ps in passages], dtype=torch.bool)  # (B, n)
        return FidBatch(batch.input_ids.view(B, n, L), batch.attention_mask.view(B, n, L), present, texts,
                        batch.offsets.view(B, n, L, 2) if offsets else None)

    def targets(self, answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder_input_ids, labels), each (B, T): ``[CLS] a1 .. ak`` and ``a1 .. ak [SEP]`` (-100 padding)."""
        enc = self.tokenizer.encode_raw([a if a.strip() else "." for a in answers])
        bodies = [e.ids[1:-1][: self.config.answer_max_length - 1] for e in enc]  # drop [CLS] .. [SEP]
        T = max(len(b) for b in bodies) + 1
        inputs = torch.full((len(bodies), T), self.pad_id, dtype=torch.long)
        labels = torch.full((len(bodies), T), IGNORE, dtype=torch.long)
        for i, body in enumerate(bodies):
            inputs[i, : len(body) + 1] = torch.tensor([self.bos_id, *body])
            labels[i, : len(body) + 1] = torch.tensor([*body, self.eos_id])
        return inputs, labels

    # ------------------------------------------------------------------------------------ forward

    def encode(self, batch: FidBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory (B, n*L, H), memory_mask (B, n*L)): every slot encoded alone, then concatenated."""
        B, n, L = batch.input_ids.shape
        out = self.encoder(batch.input_ids.reshape(B * n, L), batch.attention_mask.reshape(B * n, L))
        memory = out.last_hidden_state.reshape(B, n * L, -1)  # (B*n, L, H) -> (B, n*L, H)
        return memory, batch.memory_mask()

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys and values of ``memory`` (computed once per input)."""
        return [layer.cross.memory_kv(memory) for layer in self.decoder]

    def decode(self, decoder_input_ids: torch.Tensor, memory_kv, memory_mask: torch.Tensor,
               output_scores: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Logits (B, T, V) of the next token at every position, and (with ``output_scores``) each layer's
        pre-softmax cross-attention scores (B, nh, T, n*L)."""
        x = self.encoder.embed(decoder_input_ids)  # (B, T, H): the encoder's (tied) embeddings
        scores = [] if output_scores else None
        for layer, kv in zip(self.decoder, memory_kv):
            x, s = layer(x, kv, memory_mask, output_scores=output_scores)
            if output_scores:
                scores.append(s)
        return self.lm_head(x, self.encoder.embeddings.word.weight), scores

    def forward(self, batch: FidBatch, decoder_input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                output_scores: bool = False) -> FidOutput:
        memory, mask = self.encode(batch)
        logits, scores = self.decode(decoder_input_ids, self.memory_kv(memory), mask, output_scores)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        return FidOutput(logits, loss, scores)

    # ------------------------------------------------------------------------------------ inference

    @torch.inference_mode()
    def generate_ids(self, batch: FidBatch, num_beams: int | None = None, max_length: int | None = None
                     ) -> list[list[int]]:
        """Answer token ids of each question (no [CLS]/[SEP]); greedy with one beam."""
        from reprlab.qa.fid.generate import beam, greedy

        batch = batch.to(self.device)
        memory, mask = self.encode(batch)
        kv = self.memory_kv(memory)
        beams = num_beams or self.config.num_beams
        length = max_length or self.config.answer_max_length
        if beams == 1:
            return greedy(self, kv, mask, length)
        return beam(self, kv, mask, beams, length)

    def answer_batch(self, questions: Sequence[str], passages: Sequence[Sequence[tuple[str, str]]],
                     num_beams: int | None = None, batch_size: int = 4, bf16: bool = False) -> list[str]:
        """The generated answer of each question over its (title, text) passages, as text.

        A generated token sequence that occurs in a passage's title or text is returned as that span of
        the original text (case, accents and punctuation as written: word pieces do not decode back
        to "Levi's"); otherwise the word pieces are joined. ``bf16``: under bfloat16 autocast.
        """
        from reprlab.qa.fid.generate import surface_text

        was_training = self.training
        self.eval()
        out: list[str] = []
        try:
            for lo in range(0, len(questions), batch_size):
                batch = self.featurize(questions[lo: lo + batch_size], passages[lo: lo + batch_size], offsets=True)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    generated = self.generate_ids(batch, num_beams)
                for b, ids in enumerate(generated):
                    out.append(surface_text(self.tokenizer, ids, batch, b))
        finally:
            self.train(was_training)
        return out

    # ------------------------------------------------------------------------------------ persistence

    def save_pretrained(self, path: str | Path) -> None:
        """Write the folder atomically (see the module docstring)."""
        from reprlab.hub import write_encoder_files

        with atomic_dir(path) as tmp:
            write_encoder_files(self.encoder, tmp)
            state = {f"decoder.{k}": v.detach().contiguous() for k, v in self.decoder.state_dict().items()}
            state.update({f"lm_head.{k}": v.detach().contiguous() for k, v in self.lm_head.state_dict().items()})
            save_file(state, str(tmp / DECODER_FILE), metadata={"format": "pt"})
            self.tokenizer.save(tmp)
            (tmp / FID_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "FidReader":
        """A folder written by :meth:`save_pretrained` (``reprlab train fid``)."""
        folder = Path(path)
        if not (folder / FID_CONFIG_FILE).is_file() or not (folder / DECODER_FILE).is_file():
            raise ModelLoadError(f"{folder} is not a FiD reader (no {FID_CONFIG_FILE} / {DECODER_FILE}); "
                                 "train one with `reprlab train fid`")
        try:
            config = FidConfig.from_dict(json.loads((folder / FID_CONFIG_FILE).read_text()))
        except (json.JSONDecodeError, ConfigError, TypeError) as exc:
            raise ModelLoadError(f"{folder / FID_CONFIG_FILE}: not a FiD config ({exc})") from exc
        reader = cls(Encoder.from_pretrained(folder), Tokenizer.from_pretrained(folder), config)
        state = {}
        with safe_open(str(folder / DECODER_FILE), framework="pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key).float()
        try:
            reader.decoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})
            reader.lm_head.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("lm_head.")})
        except RuntimeError as exc:
            raise ModelLoadError(f"{folder / DECODER_FILE} does not fit {FID_CONFIG_FILE}: "
                                 f"{str(exc).splitlines()[0]}") from exc
        return reader.eval()
