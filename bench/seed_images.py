"""SEED on images: a small CNN student on Fashion-MNIST, with and without distillation from a teacher CNN.

Teacher: ``ConvEncoder(channels=(32, 64, 128), dim=128)``, trained **supervised** (cross-entropy
through a linear classifier on its 128-d embedding) on the 60k training images. Students:
``ConvEncoder(channels=(8, 16, 32), dim=128)`` (about 1/16 of the teacher's multiply-adds), either
left at random initialisation, trained self-supervised on their own (SimCLR's NT-Xent over two
augmented views, temperature 0.2: the "without SEED" baseline, as the paper's MoCo-v2 small models),
or trained with SEED from the frozen teacher (queue 4096, temperatures 0.2 / 0.01 as in the paper),
for the same number of steps. All training goes through the shared loop. Every encoder is scored by
linear-probe accuracy: a logistic regression on its pooled backbone features of the 60k training
images, evaluated on the 10k test images (labels are used only by the teacher and the probes).

Data: the 60k training set and the 10k test set of Debian's ``dataset-fashion-mnist``, as copied to
$REPRLAB_SHARED_DATA/fashion_mnist_train and fashion_mnist_test (``--train-data`` may point at the
package's own folder, /usr/share/datasets/fashion-mnist after ``apt-get install dataset-fashion-mnist``).

    flock /tmp/reprlab-heavy.lock python bench/seed_images.py     # the recorded run (CPU)
    python bench/seed_images.py --quick                           # smoke run: 2,048 / 1,000 images, 1 epoch
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[
        common.bench_options(work_dir="/tmp/reprlab-bench-seed-images")])
    p.add_argument("--train-data", type=Path, default=common.data_path("fashion_mnist_train", check=False),
                   help="folder of train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz")
    p.add_argument("--teacher-epochs", type=float, default=2.0)
    p.add_argument("--student-epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=256)
    args = common.parse(p, argv)
    if args.quick:
        args.teacher_epochs = args.student_epochs = 1.0
        args.batch_size = 128
    return args


class Classifier(nn.Module):
    def __init__(self, encoder, classes=10):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, classes)

    def forward(self, x):
        return self.head(self.encoder(x))


class SimCLR(nn.Module):
    """Two augmented views, NT-Xent (normalized temperature-scaled cross-entropy) over 2B views."""

    def __init__(self, encoder, temperature: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature

    def forward(self, views):
        a, b = views
        z = F.normalize(self.encoder(torch.cat([a, b])), dim=-1)  # (2B, D)
        B = a.size(0)
        logits = z @ z.T / self.temperature
        logits.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(z.device)
        return F.cross_entropy(logits, target), {}


class ImageCollate:
    """Augmented images (one view, or two for SimCLR) and labels, random choices drawn from the loop's rng."""

    def __init__(self, images, labels, views: int = 1):
        self.images, self.labels, self.views = images, labels, views

    def __call__(self, items, rng):
        from reprlab.distill.image import augment

        idx = torch.as_tensor(items)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = self.images[idx]
        if self.views == 2:
            return {"views": (augment(x, g), augment(x, g)), "labels": self.labels[idx]}
        return {"images": augment(x, g), "labels": self.labels[idx]}


def supervised_loss(model, batch):
    logits = model(batch["images"])
    loss = F.cross_entropy(logits, batch["labels"])
    return loss, {"acc": float((logits.argmax(-1) == batch["labels"]).float().mean())}


def simclr_loss(model, batch):
    return model(batch["views"])


def seed_loss_fn(model, batch):
    loss, metrics = model(batch["images"])
    return loss, {k: float(v) for k, v in metrics.items()}


@torch.no_grad()
def features(encoder, images, device, batch_size=1024) -> torch.Tensor:
    encoder.eval()
    return torch.cat([encoder.features(images[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(images), batch_size)])


def linear_probe(train_x, train_y, test_x, test_y, epochs: int = 100, seed: int = 0) -> float:
    """Multinomial logistic regression (full-batch L-BFGS on standardised features); test accuracy."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    probe = nn.Linear(xtr.size(1), 10)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(xtr), train_y) + 1e-4 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((probe(xte).argmax(-1) == test_y).float().mean())


def macs(encoder) -> int:
    """Multiply-adds of one 28x28 image through the convolutions."""
    total, size = 0, 28
    for m in encoder.backbone:
        if isinstance(m, nn.Conv2d):
            total += size * size * m.in_channels * m.out_channels * 9
        elif isinstance(m, nn.MaxPool2d):
            size //= 2
    return total


def load_images(args) -> tuple[torch.Tensor, ...]:
    """(train images, train labels, test images, test labels); a quick run keeps 2,048 and 1,000."""
    from reprlab.distill.image import load_fashion_mnist

    common.require(args.train_data / "train-images-idx3-ubyte.gz", "the 60k Fashion-MNIST training set")
    train_x, train_y = load_fashion_mnist(args.train_data, "train")
    test_x, test_y = load_fashion_mnist(common.data_path("fashion_mnist_test"), "test")
    if args.quick:
        train_x, train_y, test_x, test_y = train_x[:2048], train_y[:2048], test_x[:1000], test_y[:1000]
    return train_x, train_y, test_x, test_y


def train_encoders(args, train_x, train_y) -> tuple[dict, dict]:
    """The supervised teacher and the three students (random, SimCLR alone, SEED from the teacher), all
    through the shared loop with the same steps; ({row name: encoder}, {run: seconds})."""
    from reprlab.distill.image import ConvEncoder
    from reprlab.distill.seed import SEED, SEEDConfig
    from reprlab.train import TrainConfig, train

    data = list(range(len(train_x)))

    def loop(name, epochs, lr):
        return TrainConfig(output_dir=str(args.work_dir / name), epochs=epochs, batch_size=args.batch_size, lr=lr,
                           weight_decay=1e-4, warmup_ratio=0.05, schedule="cosine", device=args.device,
                           log_every=50, seed=0)

    def student(seed=1):
        torch.manual_seed(seed)
        return ConvEncoder(channels=(8, 16, 32), dim=128)

    timings = {}
    t0 = time.time()
    torch.manual_seed(0)
    teacher = ConvEncoder(channels=(32, 64, 128), dim=128)
    train(Classifier(teacher), data, ImageCollate(train_x, train_y), supervised_loss,
          loop("teacher", args.teacher_epochs, 3e-3))
    timings["teacher"] = round(time.time() - t0, 1)
    encoders = {"teacher (supervised, 32-64-128)": teacher, "student, random init": student()}
    t0 = time.time()
    ssl = student()
    train(SimCLR(ssl), data, ImageCollate(train_x, train_y, views=2), simclr_loss,
          loop("simclr", args.student_epochs, 3e-3))
    timings["simclr"] = round(time.time() - t0, 1)
    encoders["student, self-supervised alone (SimCLR)"] = ssl
    t0 = time.time()
    seeded = student()
    seed = SEED(seeded, teacher, SEEDConfig(queue_size=4096, student_temperature=0.2, teacher_temperature=0.01))
    train(seed, data, ImageCollate(train_x, train_y), seed_loss_fn, loop("seed", args.student_epochs, 3e-3))
    timings["seed"] = round(time.time() - t0, 1)
    encoders["student, SEED from the teacher"] = seeded
    return encoders, timings


def probe_rows(encoders: dict, train_x, train_y, test_x, test_y, device) -> list[dict]:
    """Linear-probe accuracy, parameters and multiply-adds of every encoder."""
    rows = []
    for name, enc in encoders.items():
        enc.to(device)
        ftr, fte = features(enc, train_x, device), features(enc, test_x, device)
        acc = linear_probe(ftr, train_y, fte, test_y)
        rows.append({"encoder": name, "params": sum(p.numel() for p in enc.parameters()), "macs": macs(enc),
                     "feature_dim": enc.feature_dim, "linear_probe_acc": round(acc, 4)})
        print(f"[seed_images] {name}: linear probe {acc:.4f}", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| encoder | params | MACs / image | probe features | linear-probe accuracy |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['params']:,} | {r['macs'] / 1e6:.2f} M | {r['feature_dim']} | "
                     f"{100 * r['linear_probe_acc']:.2f}% |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()
    torch.manual_seed(0)
    train_x, train_y, test_x, test_y = load_images(args)
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    encoders, timings = train_encoders(args, train_x, train_y)
    rows = probe_rows(encoders, train_x, train_y, test_x, test_y, torch.device(args.device))
    table = markdown(rows)
    print(table)
    record = common.write_result("seed_images", {
        "benchmark": "seed_images", "device": args.device, "torch_threads": torch.get_num_threads(),
        "args": common.settings(args), "rows": rows, "train_seconds": timings, "table": table,
        "wall_s": round(time.time() - started, 1), "train_images": len(train_x), "test_images": len(test_x)},
        args, argv)
    if args.append:
        common.append_benchmarks(common.section(
            "SEED on images: Fashion-MNIST, a small CNN with and without SEED (`bench/seed_images.py`)", record, table))
    return record


if __name__ == "__main__":
    main()
