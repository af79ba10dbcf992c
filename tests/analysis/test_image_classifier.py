"""train image-classifier: the data options (subset, dev slice, symmetric label noise), scoring, evaluation."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reprlab.analysis.image_classifier import (ImageClassifierConfig, load_training_images, predict,
                                               run_image_classifier)
from reprlab.errors import ConfigError
from reprlab.nn.resnet import ResNet, ResNetConfig
from reprlab.train.curriculum import CurriculumConfig



def _images(tmp: Path, n: int) -> str:
    """An IDX folder of n random 28 x 28 training images, labels 0..9 in turn."""
    rng = np.random.default_rng(0)
    folder = tmp / "images"
    folder.mkdir(exist_ok=True)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    labels = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(i % 10 for i in range(n))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return str(folder)


def test_subset_dev_slice_and_symmetric_label_noise(tmp_path):
    data = _images(tmp_path, n=400)
    base = ImageClassifierConfig(output_dir="x", data=data)
    full = load_training_images(base)
    assert len(full.x) == 400 and not full.noisy.any() and torch.equal(full.y, full.clean)
    noisy = load_training_images(ImageClassifierConfig(output_dir="x", data=data, label_noise=0.4, train_fraction=0.5,
                                                       dev_fraction=0.2))
    n = len(noisy.x)
    assert n + len(noisy.dev_x) == 200 and 0.1 < len(noisy.dev_x) / 200 < 0.3
    assert noisy.noisy.sum() == round(0.4 * n)
    assert torch.equal(noisy.y != noisy.clean, torch.from_numpy(noisy.noisy))  # every noisy label is wrong
    assert set(noisy.y.tolist()) <= set(range(10))
    again = load_training_images(ImageClassifierConfig(output_dir="x", data=data, label_noise=0.4, train_fraction=0.5,
                                                       dev_fraction=0.2))
    assert torch.equal(again.y, noisy.y)  # seeded
    with pytest.raises(ConfigError, match="label_noise"):
        ImageClassifierConfig(output_dir="x", data=data, label_noise=1.0)
    with pytest.raises(ConfigError, match="depth"):
        ImageClassifierConfig(output_dir="x", data=data, depth=9)


def test_learned_epoch_scoring_curriculum_and_test_accuracy(tmp_path):
    data = _images(tmp_path, n=96)
    test = tmp_path / "test"
    test.mkdir()
    for kind in ("images-idx3", "labels-idx1"):  # the same images serve as a test split
        (test / f"t10k-{kind}-ubyte.gz").write_bytes((Path(data) / f"train-{kind}-ubyte.gz").read_bytes())
    config = ImageClassifierConfig(output_dir=str(tmp_path / "run"), data=data, test_data=str(test), depth=8,
                                   width=0.25, scoring="learned-epoch", max_steps=12, batch_size=16, device="cpu",
                                   curriculum=CurriculumConfig(ordering="anti-curriculum", pacing="step",
                                                               pacing_a=0.25, pacing_b=0.5))
    result = run_image_classifier(config)
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["scoring"] == "learned-epoch" and len(scores["scores"]) == 96
    assert set(scores["scores"]) <= set(range(0, 3))  # 12 steps of 16 on 96 images: 2 epochs
    assert 0.0 <= result.test_accuracy <= 1.0 and result.model_dir.is_dir()
    model = ResNet.from_pretrained(result.model_dir)
    assert model.config == ResNetConfig(depth=8, width=0.25)
    x = torch.rand(5, 1, 28, 28)
    acc, losses, correct = predict(model, x, torch.zeros(5, dtype=torch.long))
    assert losses.shape == (5,) and acc == pytest.approx(np.mean(correct))


def test_evaluation_stays_on_the_training_device(tmp_path, monkeypatch):
    """The dev and test images are scored where the model trained, not after a move to the CPU (a wide ResNet
    trained on a GPU takes minutes on a CPU for 10k test images)."""
    import reprlab.analysis.image_classifier as ic

    data = _images(tmp_path, n=64)
    seen = []
    real_predict = ic.predict

    def predict_spy(model, x, y, batch_size=512):
        seen.append(next(model.parameters()).device)
        return real_predict(model, x, y, batch_size)

    def no_move(self):
        raise AssertionError("the trained model was moved to the CPU for evaluation")

    monkeypatch.setattr(ic, "predict", predict_spy)
    monkeypatch.setattr(ResNet, "cpu", no_move)
    result = run_image_classifier(ImageClassifierConfig(output_dir=str(tmp_path / "run"), data=data, depth=8,
                                                        width=0.25, dev_fraction=0.3, max_steps=2, batch_size=16,
                                                        device="cpu"))
    assert result.dev_accuracy is not None and seen == [torch.device("cpu")]
