"""``reprlab train image-classifier``: ResNets on Fashion-MNIST, with label noise and curricula, for the analyses.

The models the representation analyses study: the width x depth families of Nguyen et al. (ICLR
2021; :mod:`reprlab.analysis.cka`) and the curricula of Wu et al. (ICLR 2021;
:mod:`reprlab.train.curriculum`). A CIFAR-style ResNet (:mod:`reprlab.nn.resnet`) is trained with
cross-entropy on the training images of an IDX folder, on the shared training loop (checkpoints,
exact resume, DDP). Options:

* ``train_fraction`` keeps a seeded random share of the training images (the data-size axis of the
  CKA study); ``dev_fraction`` holds out a slice by :mod:`reprlab.text.splits` (key: the image's
  index), never trained on, for choosing settings;
* ``label_noise`` p replaces the labels of a seeded random share p of the training images with a
  label drawn uniformly from the *other* classes (symmetric noise; the dev and test labels stay clean);
* ``curriculum``: an ordering, a pacing function and a scoring. Without a score file the examples are
  scored by the loss-based c-score (:func:`cscore`: ``score_folds``-fold retraining of the same model
  for ``score_steps`` steps, each example's loss when held out) or by the learned epoch, written to
  ``OUT/scores.json`` and reused on resume.

The model (``OUT/model``) is a ResNet folder that ``reprlab analyze cka`` reads.

>>> run_image_classifier(ImageClassifierConfig(data="fashion_mnist_train", output_dir="runs/r20",   # doctest: +SKIP
...                      depth=20, width=2, test_data="fashion_mnist_test"))
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reprlab.errors import ConfigError
from reprlab.io import atomic_write_json
from reprlab.nn.resnet import ResNet, ResNetConfig
from reprlab.text.images import load_fashion_mnist
from reprlab.text.splits import hash_fraction
from reprlab.train.curriculum import CurriculumConfig, build_sampler, learned_epoch, loss_cscore, read_scores
from reprlab.train.loop import TrainConfig, planned_steps, train
from reprlab.train.recipe import (RecipeConfig, RecipeResult, check, finished, loop, option, read_metrics,
                                  recipe_config, register)

logger = logging.getLogger("reprlab")
SCORINGS = ("loss-cscore", "learned-epoch")


@recipe_config
class ImageClassifierConfig(RecipeConfig):
    output_dir: str = option(help="run folder (the model in OUT/model, a ResNet folder)", flag="--out")
    data: str = option(help="IDX folder with the training images (train-images-idx3-ubyte[.gz] and labels)")
    test_data: str | None = option(None, help="IDX folder whose test split is evaluated at the end (reported)")
    depth: int = option(20, help="ResNet depth, 6k + 2 (8, 14, 20, ..., 56)")
    width: float = option(1.0, help="channel multiplier (stages of 16w, 32w, 64w channels)")
    pool_input: int = option(1, help="average-pool the images by this factor first (2: 14 x 14, a quarter of the work)")
    train_fraction: float = option(1.0, help="seeded random share of the training images kept")
    dev_fraction: float = option(0.0, help="share of the training images held out as a dev slice (not trained on)")
    label_noise: float = option(0.0, help="share of the training labels replaced by another class, at random")
    data_seed: int = option(0, help="seed of the subset and of the label noise")
    curriculum: CurriculumConfig = option(default_factory=CurriculumConfig, prefix="curriculum",
                                          help="curriculum (Wu et al. 2021)")
    scoring: str = option("loss-cscore", choices=SCORINGS, help="difficulty scores when no score file is given")
    score_folds: int = option(3, help="folds of the loss-based c-score")
    score_steps: int | None = option(None, help="steps of each scoring run (default: those of the run)")
    train: TrainConfig = loop(lr=2e-3, batch_size=128, epochs=5.0, schedule="cosine", warmup_ratio=0.05,
                              weight_decay=5e-4)

    def __post_init__(self):
        ResNetConfig(depth=self.depth, width=self.width, pool_input=self.pool_input)  # raises on a bad shape
        check(0 < self.train_fraction <= 1, "train_fraction", f"must be in (0, 1], got {self.train_fraction}")
        check(0 <= self.dev_fraction < 1, "dev_fraction", f"must be in [0, 1), got {self.dev_fraction}")
        check(0 <= self.label_noise < 1, "label_noise", f"must be in [0, 1), got {self.label_noise}")
        check(self.score_folds >= 2, "score_folds", f"must be >= 2, got {self.score_folds}")
        check(self.score_steps is None or self.score_steps >= 1, "score_steps", "must be >= 1 (or left out)")


@dataclass
class ImageClassifierResult(RecipeResult):
    examples: int = 0
    noisy_labels: int = 0
    dev_accuracy: float | None = None
    test_accuracy: float | None = None

    def summary(self) -> str:
        acc = "" if self.test_accuracy is None else f"test accuracy {self.test_accuracy:.4f}; "
        return f"{self.examples} training images; {acc}" + super().summary()


# ----------------------------------------------------------------------------- data


@dataclass
class ImageData:
    x: torch.Tensor  # (N, 1, 28, 28) training images
    y: torch.Tensor  # (N,) training labels, noisy where ``noisy``
    clean: torch.Tensor  # (N,) the original labels
    noisy: np.ndarray  # (N,) bool
    dev_x: torch.Tensor
    dev_y: torch.Tensor


def load_training_images(config: ImageClassifierConfig) -> ImageData:
    """The kept training images (subset, dev slice removed) with their (noisy) labels, and the dev slice."""
    x, y = load_fashion_mnist(config.data, "train")
    rng = np.random.default_rng([config.data_seed, 15485863])
    keep = np.sort(rng.permutation(len(x))[: max(1, round(config.train_fraction * len(x)))])
    dev = np.array([hash_fraction(str(i)) < config.dev_fraction for i in keep], dtype=bool)
    train_idx, dev_idx = keep[~dev], keep[dev]
    clean = y[train_idx]
    labels = clean.clone()
    noisy = np.zeros(len(train_idx), dtype=bool)
    if config.label_noise:
        classes = int(y.max()) + 1
        chosen = rng.permutation(len(train_idx))[: round(config.label_noise * len(train_idx))]
        shift = torch.from_numpy(rng.integers(1, classes, size=len(chosen)))
        labels[chosen] = (clean[chosen] + shift) % classes  # uniformly one of the other classes
        noisy[chosen] = True
    return ImageData(x[train_idx], labels, clean, noisy, x[dev_idx], y[dev_idx])


class ImageCollate:
    """Items are indices into the image tensors; a batch is {"x": (B, 1, 28, 28), "y": (B,)}."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __call__(self, items: list[int], rng) -> dict:
        idx = torch.as_tensor(items, dtype=torch.long)
        return {"x": self.x[idx], "y": self.y[idx]}


def classification_loss(model, batch):
    logits = model(batch["x"])  # (B, classes)
    loss = F.cross_entropy(logits, batch["y"])
    return loss, {"accuracy": float((logits.argmax(-1) == batch["y"]).float().mean())}


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, np.ndarray,
                                                                                                        np.ndarray]:
    """(accuracy, per-example losses, per-example correctness) of ``model`` on images ``x`` with labels ``y``."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    losses, correct = [], []
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size].to(device))
        target = y[start:start + batch_size].to(device)
        losses.append(F.cross_entropy(logits, target, reduction="none").cpu())
        correct.append((logits.argmax(-1) == target).cpu())
    model.train(was)
    c = torch.cat(correct).numpy() if correct else np.zeros(0, dtype=bool)
    return float(c.mean()) if len(c) else float("nan"), torch.cat(losses).numpy(), c


# ----------------------------------------------------------------------------- scoring


def _fit(model_config: ResNetConfig, x, y, idx, loop_config: TrainConfig, seed: int, callbacks=()) -> ResNet:
    torch.manual_seed(seed)
    model = ResNet(model_config)
    train(model, [int(i) for i in idx], ImageCollate(x, y), classification_loss, loop_config, callbacks)
    return model


def cscore(model_config: ResNetConfig, x: torch.Tensor, y: torch.Tensor, loop_config: TrainConfig, folds: int = 3,
           seed: int = 0) -> np.ndarray:
    """The loss-based c-score of every image: its loss under a model trained on the other folds
    (:func:`~reprlab.train.curriculum.loss_cscore`); each fold run trains in ``loop_config.output_dir``/fold-k."""
    root = Path(loop_config.output_dir)

    def train_and_score(train_idx, held, run):
        run_config = replace(loop_config, output_dir=str(root / f"fold-{run}"), seed=seed + run, resume=False)
        shutil.rmtree(run_config.output_dir, ignore_errors=True)
        model = _fit(model_config, x, y, train_idx, run_config, seed + run)
        return predict(model, x[held], y[held])[1]

    return loss_cscore(len(x), train_and_score, folds=folds, seed=seed)


class _EpochRecorder:
    """Correctness on every training image at the end of each epoch (for the learned epoch)."""

    def __init__(self, x, y, steps_per_epoch: int):
        self.x, self.y, self.every, self.rows = x, y, steps_per_epoch, []

    def on_step_end(self, state, model, metrics):
        if state.step % self.every == 0:
            self.rows.append(predict(model, self.x, self.y)[2])


def learned_epoch_scores(model_config: ResNetConfig, x, y, loop_config: TrainConfig, seed: int = 0) -> np.ndarray:
    """The learned epoch of every image (:func:`~reprlab.train.curriculum.learned_epoch`) in one run on all of them."""
    steps_per_epoch = max(1, len(x) // loop_config.batch_size)
    recorder = _EpochRecorder(x, y, steps_per_epoch)
    shutil.rmtree(loop_config.output_dir, ignore_errors=True)
    _fit(model_config, x, y, range(len(x)), replace(loop_config, resume=False), seed, (recorder,))
    return learned_epoch(np.stack(recorder.rows)) if recorder.rows else np.zeros(len(x))


def difficulty(config: ImageClassifierConfig, data: ImageData, model_config: ResNetConfig, total_steps: int):
    """The curriculum's difficulty scores: a score file, OUT/scores.json of an earlier start, or computed."""
    if config.curriculum.scores:
        return read_scores(config.curriculum.scores, len(data.x))
    path = Path(config.output_dir) / "scores.json"
    if path.is_file():
        return read_scores(path, len(data.x))
    loop_config = replace(config.train, output_dir=str(Path(config.output_dir) / "scoring"),
                          max_steps=config.score_steps or total_steps, checkpoint_minutes=0.0, checkpoint_every=0)
    logger.info(f"scoring {len(data.x)} training images by {config.scoring} ({loop_config.max_steps} steps per run)")
    if config.scoring == "loss-cscore":
        scores = cscore(model_config, data.x, data.y, loop_config, config.score_folds, config.train.seed)
    else:
        scores = learned_epoch_scores(model_config, data.x, data.y, loop_config, config.train.seed)
    atomic_write_json(path, {"scores": [float(s) for s in scores], "higher": "harder",  # exact: a resume reads them
                             "scoring": config.scoring})
    shutil.rmtree(loop_config.output_dir, ignore_errors=True)
    return scores


# ----------------------------------------------------------------------------- the recipe


@register("train image-classifier", ImageClassifierConfig,
          help="a ResNet on Fashion-MNIST images (widths, depths, data sizes, label noise, curricula)")
def run_image_classifier(config: ImageClassifierConfig, callbacks: Sequence = (),
                         stop_after: int | None = None) -> ImageClassifierResult:
    data = load_training_images(config)
    test = load_fashion_mnist(config.test_data, "test") if config.test_data else None  # checked before training
    if len(data.x) < config.train.batch_size:
        raise ConfigError(f"{len(data.x)} training images, fewer than one batch of {config.train.batch_size}",
                          field="train.batch_size")
    side = min(data.x.shape[-2:])
    check(side // config.pool_input >= 1, "pool_input", f"pooling {side} x {side} images by {config.pool_input} "
          "leaves no pixel")
    check(config.score_folds <= len(data.x), "score_folds",
          f"more folds than the {len(data.x)} training images, got {config.score_folds}")
    classes = int(max(data.y.max(), data.clean.max())) + 1
    model_config = ResNetConfig(depth=config.depth, width=config.width, pool_input=config.pool_input,
                                num_classes=max(classes, 2))
    run = config.loop_config("image-classifier", examples=len(data.x))
    total = planned_steps(run, len(data.x))
    sampler = None
    if config.curriculum.active:
        scores = None if config.curriculum.ordering == "random" else difficulty(config, data, model_config, total)
        sampler = build_sampler(config.curriculum, scores, total, run.batch_size, run.seed,
                                labels=data.y.numpy(), n=len(data.x))
    torch.manual_seed(run.seed)
    model = ResNet(model_config)
    state = train(model, list(range(len(data.x))), ImageCollate(data.x, data.y), classification_loss, run, callbacks,
                  stop_after=stop_after, sampler=sampler)
    out = Path(config.output_dir)
    result = ImageClassifierResult(out, None, state.step, read_metrics(out), len(data.x), int(data.noisy.sum()))
    if not finished(state):
        return result
    if state.rank == 0:
        model.save_pretrained(out / "model")
    result.model_dir = out / "model"  # evaluated where it trained (a wide ResNet on 10k images is minutes on a CPU)
    if len(data.dev_x):
        result.dev_accuracy = predict(model, data.dev_x, data.dev_y)[0]
    if test is not None:
        result.test_accuracy = predict(model, *test)[0]
    if state.rank == 0:
        atomic_write_json(out / "results.json", {"dev_accuracy": result.dev_accuracy,
                                                 "test_accuracy": result.test_accuracy, "steps": state.step,
                                                 "examples": len(data.x), "noisy_labels": result.noisy_labels})
    return result
