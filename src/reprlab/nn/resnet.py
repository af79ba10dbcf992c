"""Small ResNets for 28 x 28 images (Fashion-MNIST): the width and depth families of the CKA study.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Section 4.2 (the
CIFAR ResNets), as used by Nguyen, Raghu & Kornblith, "Do Wide and Deep Networks Learn the Same
Things?", ICLR 2021 (official code: google-research/google-research,
``do_wide_and_deep_networks_learn_the_same_things/resnet_cifar.py``). A ResNet of depth 6k + 2 is a
3 x 3 conv-BN-ReLU stem, three stages of k basic blocks (two 3 x 3 conv-BN, ReLU between, ReLU after
the residual sum) with 16w, 32w and 64w channels for width multiplier w, the first block of stages 2
and 3 halving the resolution (stride 2, a 1 x 1 convolution on the shortcut), then global average
pooling and a linear classifier. On 28 x 28 inputs the stages run at 28, 14 and 7 pixels
(``pool_input=2`` averages 2 x 2 pixels first: 14, 7 and 4 pixels, a quarter of the work).

:meth:`ResNet.representation_layers` names the modules whose outputs a representation analysis reads:
the stem, and in every block the inner post-ReLU activation and the block output (depth - 1 layers in
all, in forward order). A model folder holds ``config.json`` (``model_type: reprlab-resnet``) and
``model.safetensors``.

>>> model = ResNet(ResNetConfig(depth=8, width=1))
>>> model(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
>>> len(model.representation_layers())
7
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from reprlab.errors import ConfigError, ModelLoadError
from reprlab.io import atomic_dir

MODEL_TYPE = "reprlab-resnet"


MAX_PARAMETERS = 2e8  # about 0.8 GB of fp32 weights; the paper's widest ResNets have a few million


@dataclass
class ResNetConfig:
    depth: int = 20  # 6k + 2: 8, 14, 20, 26, 32, 38, 44, 50, 56, ...
    width: float = 1.0  # channel multiplier: stages of round(16w), round(32w), round(64w) channels
    in_channels: int = 1
    num_classes: int = 10
    pool_input: int = 1  # average-pool the input by this factor first (2: 28 x 28 images run at 14 x 14)

    def __post_init__(self):
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ConfigError(f"a CIFAR-style ResNet has depth 6k + 2 >= 8 (8, 14, 20, ...), got {self.depth}",
                              field="depth")
        if not self.width > 0 or round(16 * self.width) < 1:
            raise ConfigError(f"width must give at least 1 channel (16 x width >= 0.5), got {self.width}",
                              field="width")
        if self.in_channels < 1 or self.num_classes < 2:
            raise ConfigError("in_channels must be >= 1 and num_classes >= 2", field="num_classes")
        if self.pool_input < 1:
            raise ConfigError(f"pool_input must be >= 1, got {self.pool_input}", field="pool_input")
        if self.parameters_estimate() > MAX_PARAMETERS:
            raise ConfigError(f"depth {self.depth} x width {self.width} gives about {self.parameters_estimate():.2e} "
                              f"weights, more than the {MAX_PARAMETERS:.1e} this recipe allows (4 bytes each, "
                              "plus gradients and optimizer state)", field="width")

    def parameters_estimate(self) -> float:
        """The 3 x 3 convolution weights, which are nearly all of them: 2 per block, 9 c^2 each."""
        return sum(2 * self.blocks_per_stage * 9 * self.channels(s) ** 2 for s in range(3))

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    def channels(self, stage: int) -> int:
        return int(round(16 * self.width)) * 2 ** stage


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut (identity, or a strided 1x1 conv), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride) if stride != 1 or c_in != c_out else nn.Identity()
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))  # (B, C_out, H / s, W / s)
        y = self.bn2(self.conv2(y))
        return self.act2(y + self.shortcut(x))


class ResNet(nn.Module):
    """Images (B, C, 28, 28) -> logits (B, num_classes); ``features`` gives the pooled (B, 64w) vector."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        c = config.channels(0)
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU())
        blocks = []
        for stage in range(3):
            c_out = config.channels(stage)
            for i in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c, c_out, stride))
                c = c_out
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.pool_input > 1:
            x = F.avg_pool2d(x, self.config.pool_input)  # (B, C, 28 / p, 28 / p)
        x = self.stem(x)  # (B, 16w, H, W)
        for block in self.blocks:
            x = block(x)
        return x.mean(dim=(2, 3))  # (B, 64w) global average pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def representation_layers(self) -> list[str]:
        """Module names whose outputs are the layers of a representation analysis, in forward order."""
        names = ["stem"]
        for i in range(len(self.blocks)):
            names += [f"blocks.{i}.act1", f"blocks.{i}"]
        return names

    def save_pretrained(self, path: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` (weights and BatchNorm statistics), written atomically."""
        with atomic_dir(path) as tmp:
            (tmp / "config.json").write_text(json.dumps({"model_type": MODEL_TYPE, **asdict(self.config)}, indent=2))
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                      str(tmp / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ResNet":
        folder = Path(path)
        config = read_resnet_config(folder)
        if config is None:
            raise ModelLoadError(f"{folder} is not a reprlab ResNet folder (config.json with model_type "
                                 f"{MODEL_TYPE!r})")
        model = cls(config)
        try:
            model.load_state_dict(load_file(str(folder / "model.safetensors")))
        except SafetensorError as exc:
            raise ModelLoadError(f"{folder}/model.safetensors: damaged or not safetensors ({exc})") from exc
        except (OSError, RuntimeError) as exc:
            raise ModelLoadError(f"{folder}: the weights do not fit the config ({str(exc).splitlines()[0]})") from exc
        return model


def read_resnet_config(folder: str | Path) -> ResNetConfig | None:
    """The :class:`ResNetConfig` of a ResNet model folder, or None when ``folder`` holds another kind of model."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("model_type") != MODEL_TYPE:
        return None
    fields = {k: data[k] for k in ("depth", "width", "in_channels", "num_classes", "pool_input") if k in data}
    return ResNetConfig(**fields)
