"""The IDX reader (Fashion-MNIST): bad files are one-line errors naming the file; the real test set reads."""

import gzip

import numpy as np
import pytest

from reprlab.errors import DataFormatError
from reprlab.text.images import idx_split, load_fashion_mnist, read_idx


def _write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x09\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataFormatError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataFormatError, match="5"):
        read_idx(short)
    with pytest.raises(DataFormatError, match="not found"):
        read_idx(tmp_path / "absent-idx1-ubyte")


@pytest.mark.parametrize("gz", [False, True])
def test_a_written_split_reads_back_gzipped_or_not(tmp_path, gz):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.array([4, 0, 9]), gz)
    assert idx_split(tmp_path) == "test" and idx_split(tmp_path / "nothing") is None
    x, y = load_fashion_mnist(tmp_path, "auto")
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [4, 0, 9]
    assert np.allclose(x.numpy()[:, 0] * 255, images)
    with pytest.raises(DataFormatError, match="not found"):
        load_fashion_mnist(tmp_path, "train")


def test_fashion_mnist_test_set_reads(shared_data):
    folder = shared_data("fashion_mnist_test")
    x, y = load_fashion_mnist(folder, "test")
    assert x.shape == (10000, 1, 28, 28) and float(x.max()) <= 1.0
    assert np.bincount(y.numpy()).tolist() == [1000] * 10
