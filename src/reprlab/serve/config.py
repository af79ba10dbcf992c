"""What ``reprlab serve`` loads and the limits it enforces on every request."""

from __future__ import annotations

from dataclasses import dataclass, field

from reprlab.train.recipe import check, option

BACKENDS = ("torch", "onnx", "onnx-int8")  # reprlab.encoder.BACKENDS


@dataclass
class Limits:
    """Bounds of a request; a request outside them is answered 422 naming the field (they are in the schema)."""

    max_query_chars: int = option(1000, help="longest query or question, in characters")
    max_k: int = option(100, help="most results (or chains) one request may ask for")
    max_texts: int = option(64, help="most texts one /encode request may send")
    max_text_chars: int = option(10000, help="longest text of /encode, in characters")
    max_passages: int = option(20, help="most passages one /answer request may send or retrieve")
    max_passage_chars: int = option(20000, help="longest passage of /answer, in characters")
    max_beam: int = option(20, help="largest MDR beam of /multihop")
    max_body_bytes: int = option(1_000_000, help="largest request body, in bytes (413 above it)")

    def __post_init__(self):
        for name in ("max_query_chars", "max_k", "max_texts", "max_text_chars", "max_passages",
                     "max_passage_chars", "max_beam", "max_body_bytes"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name,
                  f"must be a positive integer, got {getattr(self, name)!r}")


@dataclass
class ServeConfig:
    """The components of a service and how requests are batched."""

    index: str = option(help="index folder (`reprlab index`), or a folder of versions index-vNNNN/ (ANCE)")
    watch: str | None = option(None, help="folder where new index versions appear (index-vNNNN/, e.g. ANCE's "
                               "OUT/ance): the newest is loaded in the background and swapped in")
    multihop_index: str | None = option(None, help="index folder of `reprlab index --multihop` (enables /multihop)")
    reader: str | None = option(None, help="reader folder (`reprlab train reader`; enables /answer)")
    backend: str = option("torch", help="query encoder backend (onnx-int8: the quantised ONNX graph)", choices=BACKENDS)
    onnx_model: str | None = option(None, help="ONNX export of the index's model (default: exported at start)")
    batch_wait_ms: float = option(2.0, help="how long the encoder waits for more requests to fill a batch")
    max_batch: int = option(64, help="most texts encoded in one forward pass")
    encode_workers: int = option(0, help="batches encoded at once, each by its own worker thread; a batch formed "
                                 "while several are free is shared among them (0: 2 for the torch backend on a "
                                 "machine with >= 2 torch threads, else 1; measured in bench/serve.py)")
    encode_threads: int | None = option(None, help="torch threads of each encode worker (default: the machine's "
                                        "torch threads divided among the workers, at least 1)")
    watch_seconds: float = option(2.0, help="how often a folder of index versions is checked for a new one")
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        check(self.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        check(0 <= self.batch_wait_ms <= 60_000, "batch_wait_ms",
              f"must be 0..60000 (a request waits this long at most), got {self.batch_wait_ms}")
        check(self.max_batch >= 1, "max_batch", f"must be at least 1, got {self.max_batch}")
        check(0 <= self.encode_workers <= 64, "encode_workers", f"must be 0..64 (0: automatic), got {self.encode_workers}")
        check(self.encode_threads is None or self.encode_threads >= 1, "encode_threads",
              f"must be at least 1, got {self.encode_threads}")
        check(0 < self.watch_seconds < float("inf"), "watch_seconds", f"must be > 0, got {self.watch_seconds}")
        check(self.onnx_model is None or self.backend != "torch", "onnx_model",
              "an ONNX export is used with --backend onnx or onnx-int8")
