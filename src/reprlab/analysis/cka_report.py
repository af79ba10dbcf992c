"""``reprlab analyze cka``: the layer x layer CKA of one model (or of two, and across them) on a data set.

Runs minibatch CKA (:mod:`reprlab.analysis.cka`, Nguyen et al. 2021) over the examples of ``data``:
each model's forward pass is hooked (:class:`~reprlab.analysis.activations.LayerRecorder`, which keeps
only each layer's (B, B) Gram matrix), and the unbiased HSIC of every pair of layers is accumulated
over fixed-size minibatches (an incomplete last minibatch is dropped). Alongside come the share of
variance along each layer's first principal component and the block structure: runs of consecutive
layers whose pairwise CKA all exceed ``threshold``.

Models: a reprlab ResNet folder (:mod:`reprlab.nn.resnet`) reads an IDX image folder (Fashion-MNIST's
test set); a text encoder folder, ``minilm``, or a dual encoder's query tower reads texts (any corpus
:func:`reprlab.text.corpus.read_texts` reads: a BEIR folder's documents, JSONL, text files), each
layer's token states mean-pooled over the real tokens. Two models must read the same kind of data.

Writes ``cka.json`` (the matrices, PC1 shares, blocks, settings) and heatmaps ``cka_a.png``
(``cka_b.png``, ``cka_ab.png`` for two models) to the output folder.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from reprlab.analysis.activations import POOLS, LayerRecorder, select_layers
from reprlab.analysis.cka import MinibatchCKA, PC1Fraction, find_blocks
from reprlab.errors import ConfigError, DataFormatError, require
from reprlab.io import atomic_open, atomic_write_json
from reprlab.logs import progress
from reprlab.train.recipe import check, option

logger = logging.getLogger("reprlab")


@dataclass
class CKAConfig:
    output_dir: str = option(help="folder for cka.json and the heatmaps", flag="--out")
    data: str = option(help="an IDX image folder (for ResNets) or a corpus: BEIR folder, JSONL, text files")
    models: list[str] = option(default_factory=list, cli=False, help="one or two model folders")
    batch_size: int = option(256, help="examples per minibatch of the HSIC estimates (fixed; the tail is dropped)")
    max_examples: int | None = option(None, help="use at most this many examples of the data (default: all)")
    layers: str | None = option(None, help="regular expression of module names to compare (default: the "
                                "model's representation layers)")
    pool: str = option("auto", choices=POOLS, help="per-example reduction: auto = masked token mean for text, "
                       "flattened feature maps for images")
    max_length: int = option(128, help="tokens per text")
    unit: str = option("paragraph", choices=("paragraph", "line"), help="texts of plain text files: blank-line "
                       "separated paragraphs or lines")
    threshold: float = option(0.9, help="CKA above which consecutive layers form a block")
    min_block: int = option(3, help="layers a block holds at least")
    device: str = option("cpu", choices=("cpu", "cuda"), help="where the models and the statistics run")

    def __post_init__(self):
        check(1 <= len(self.models) <= 2, "models", f"give one or two models, got {len(self.models)}")
        check(self.batch_size >= 4, "batch_size", f"must be at least 4 (the unbiased HSIC), got {self.batch_size}")
        check(self.max_examples is None or self.max_examples >= self.batch_size, "max_examples",
              f"must be at least one minibatch ({self.batch_size}), got {self.max_examples}")
        check(self.max_length >= 2, "max_length", f"must be >= 2, got {self.max_length}")
        check(0.0 < self.threshold <= 1.0, "threshold", f"must be in (0, 1], got {self.threshold}")
        check(self.min_block >= 2, "min_block", f"must be >= 2, got {self.min_block}")


@dataclass
class Analysed:
    """One loaded model: the module, its kind ('image' or 'text'), the layers read, and the run's name."""

    module: torch.nn.Module
    kind: str
    layers: list[str]
    name: str
    tokenizer: object | None = None


def load_model(path: str, pattern: str | None = None) -> Analysed:
    """A ResNet folder, or a text encoder folder / 'minilm' (a dual encoder folder: its query tower)."""
    from reprlab.nn.resnet import ResNet, read_resnet_config

    folder = Path(path)
    if read_resnet_config(folder) is not None:
        model = ResNet.from_pretrained(folder)
        return Analysed(model, "image", select_layers(model, pattern), str(path))
    from reprlab.encoder import SentenceEncoder

    if (folder / "query").is_dir() and not (folder / "config.json").is_file():
        folder = folder / "query"  # a two-tower dual encoder: the query tower
    model = SentenceEncoder.from_pretrained(str(folder) if folder.exists() else path)
    return Analysed(model, "text", select_layers(model, pattern), str(path), model.tokenizer)


def load_inputs(data: str, kind: str, max_examples: int | None, unit: str = "paragraph"):
    """Images (N, 1, 28, 28) of an IDX folder, or a list of texts."""
    if kind == "image":
        from reprlab.text.images import idx_split, load_fashion_mnist

        if idx_split(data) is None:
            raise DataFormatError("an image model reads an IDX folder (e.g. fashion_mnist_test); found no "
                                  "*-images-idx3-ubyte[.gz] file there", path=data)
        images, _ = load_fashion_mnist(data, "auto")
        return images[:max_examples] if max_examples else images
    from reprlab.text.corpus import read_texts

    return read_texts([data], max_texts=max_examples, unit=unit)


def _batches(inputs, batch_size: int) -> Iterator:
    for start in range(0, len(inputs) - batch_size + 1, batch_size):  # fixed size: the tail is dropped
        yield inputs[start:start + batch_size]


@torch.no_grad()
def _grams(model: Analysed, recorder: LayerRecorder, batch, config: CKAConfig) -> list[torch.Tensor]:
    """One minibatch through ``model``; the (B, B) Gram matrix of every recorded layer."""
    device = torch.device(config.device)
    if model.kind == "image":
        model.module(batch.to(device))
    else:
        tokens = model.tokenizer(list(batch), max_length=config.max_length).to(device)
        recorder.set_mask(tokens.attention_mask)
        model.module(tokens.input_ids, tokens.attention_mask)
    return recorder.outputs()


@dataclass
class CKAReport:
    config: dict
    examples: int
    batches: int
    models: list[dict] = field(default_factory=list)  # per model: name, kind, layers, cka, pc1, blocks
    cross: list[list[float]] | None = None  # (La, Lb) CKA across the two models

    def to_dict(self) -> dict:
        return asdict(self)


def _model_record(model: Analysed, matrix: np.ndarray, pc1: np.ndarray, config: CKAConfig) -> dict:
    blocks = find_blocks(matrix, config.threshold, config.min_block)
    return {"name": model.name, "kind": model.kind, "layers": model.layers, "cka": np.round(matrix, 6).tolist(),
            "pc1_fraction": np.round(pc1, 6).tolist(), "blocks": [b.to_dict() for b in blocks],
            "layers_in_blocks": sum(b.size for b in blocks)}


def analyse(config: CKAConfig, models: Sequence[Analysed] | None = None, inputs=None) -> CKAReport:
    """Minibatch CKA of ``config.models`` (or already loaded ``models``) on ``config.data`` (or ``inputs``)."""
    models = list(models) if models is not None else [load_model(m, config.layers) for m in config.models]
    if len({m.kind for m in models}) > 1:
        raise ConfigError("the two models read different kinds of data (an image model and a text model)",
                          field="models")
    if inputs is None:
        inputs = load_inputs(config.data, models[0].kind, config.max_examples, config.unit)
    if len(inputs) < config.batch_size:
        raise ConfigError(f"the data holds {len(inputs)} examples, fewer than one minibatch of {config.batch_size}",
                          field="batch_size")
    for m in models:
        m.module.to(config.device).eval()
    recorders = [LayerRecorder(m.module, m.layers, pool=config.pool, gram=True) for m in models]
    acc, pcs = MinibatchCKA(config.device), [PC1Fraction() for _ in models]
    try:
        total = len(inputs) // config.batch_size
        for batch in progress(_batches(inputs, config.batch_size), total=total, desc="cka", unit="batch"):
            grams = [_grams(m, r, batch, config) for m, r in zip(models, recorders)]
            acc.update(grams[0], grams[1] if len(grams) > 1 else None, grams=True)
            for pc, g in zip(pcs, grams):
                pc.update(g, grams=True)
    finally:
        for r in recorders:
            r.close()
    result = acc.result()
    settings = {k: v for k, v in asdict(config).items() if k != "output_dir"}
    report = CKAReport(settings, result.examples, result.batches)
    for m, matrix, pc in zip(models, (result.a, result.b), pcs):
        report.models.append(_model_record(m, matrix, pc.result(), config))
    if result.ab is not None:
        report.cross = np.round(result.ab, 6).tolist()
    return report


def heatmap(matrix, path: str | Path, title: str, xlabel: str = "layer", ylabel: str = "layer") -> Path:
    """A CKA matrix as a PNG (layer 0 at the bottom left, as in the paper's figures)."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(m, origin="lower", cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def write_report(report: CKAReport, output_dir: str | Path) -> list[Path]:
    """``cka.json`` and the heatmaps; returns the paths written."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "cka.json", report.to_dict())
    written = [out / "cka.json"]
    for tag, m in zip("ab", report.models):
        written.append(heatmap(m["cka"], out / f"cka_{tag}.png", f"CKA, {Path(m['name']).name}"))
    if report.cross is not None:
        names = [Path(m["name"]).name for m in report.models]
        written.append(heatmap(report.cross, out / "cka_ab.png", f"CKA, {names[0]} vs {names[1]}",
                               xlabel=f"layer of {names[1]}", ylabel=f"layer of {names[0]}"))
    return written
