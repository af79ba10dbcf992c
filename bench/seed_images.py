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

Data: the 60k training set from Debian's ``dataset-fashion-mnist`` (``apt-get install
dataset-fashion-mnist``, files under /usr/share/datasets/fashion-mnist) and the 10k test set from
../shared/data/fashion_mnist_test.

    flock /tmp/reprlab-heavy.lock python bench/seed_images.py     # the recorded run (CPU)
    python bench/seed_images.py --quick                           # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.io import atomic_write_json
from reprlab.logs import machine_summary

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REPRLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
TRAIN_DIR = Path("/usr/share/datasets/fashion-mnist")


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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--teacher-epochs", type=float, default=2.0)
    p.add_argument("--student-epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--work-dir", default="/tmp/reprlab-bench-seed-images")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)

    from reprlab.distill.image import ConvEncoder, load_fashion_mnist
    from reprlab.distill.seed import SEED, SEEDConfig
    from reprlab.train import TrainConfig, train

    started = time.time()
    torch.manual_seed(0)
    if not (TRAIN_DIR / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"the 60k training set is missing: apt-get install dataset-fashion-mnist (expected {TRAIN_DIR})")
    train_x, train_y = load_fashion_mnist(TRAIN_DIR, "train")
    test_x, test_y = load_fashion_mnist(DATA / "fashion_mnist_test", "test")
    if args.quick:
        train_x, train_y = train_x[:2048], train_y[:2048]
        test_x, test_y = test_x[:1000], test_y[:1000]
        args.teacher_epochs = args.student_epochs = 1.0
        args.batch_size = 128
    n = len(train_x)
    data = list(range(n))
    work = Path(args.work_dir)
    import shutil

    if work.exists():
        shutil.rmtree(work)

    def loop(name, epochs, lr):
        return TrainConfig(output_dir=str(work / name), epochs=epochs, batch_size=args.batch_size, lr=lr,
                           weight_decay=1e-4, warmup_ratio=0.05, schedule="cosine", device=args.device,
                           log_every=50, seed=0)

    timings = {}
    # teacher: supervised
    t0 = time.time()
    torch.manual_seed(0)
    teacher = ConvEncoder(channels=(32, 64, 128), dim=128)
    train(Classifier(teacher), data, ImageCollate(train_x, train_y), supervised_loss,
          loop("teacher", args.teacher_epochs, 3e-3))
    timings["teacher"] = round(time.time() - t0, 1)

    def student(seed=1):
        torch.manual_seed(seed)
        return ConvEncoder(channels=(8, 16, 32), dim=128)

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

    device = torch.device(args.device)
    rows = []
    for name, enc in encoders.items():
        enc.to(device)
        ftr, fte = features(enc, train_x, device), features(enc, test_x, device)
        acc = linear_probe(ftr, train_y, fte, test_y)
        rows.append({"encoder": name, "params": sum(p.numel() for p in enc.parameters()), "macs": macs(enc),
                     "feature_dim": enc.feature_dim, "linear_probe_acc": round(acc, 4)})
        print(f"[seed_images] {name}: linear probe {acc:.4f}", file=sys.stderr)
    lines = ["| encoder | params | MACs / image | probe features | linear-probe accuracy |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['params']:,} | {r['macs'] / 1e6:.2f} M | {r['feature_dim']} | "
                     f"{100 * r['linear_probe_acc']:.2f}% |")
    table = "\n".join(lines)
    print(table)
    out = {
        "benchmark": "seed_images", "date": datetime.date.today().isoformat(), "machine": machine_summary(),
        "device": args.device, "torch_threads": torch.get_num_threads(), "args": vars(args), "rows": rows,
        "train_seconds": timings, "table": table, "wall_s": round(time.time() - started, 1),
        "train_images": n, "test_images": len(test_x),
        "command": "python bench/seed_images.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    path = Path(args.output) if args.output else REPO / "bench" / "results" / (
        "seed_images-quick.json" if args.quick else "seed_images.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)
    print(f"wrote {path} (wall {out['wall_s']} s)", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
