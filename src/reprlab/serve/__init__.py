"""``reprlab serve``: an HTTP search and QA service over reprlab's indexes, readers and encoders.

FastAPI + uvicorn (the ``serve`` extra). Endpoints: ``POST /search`` (dense, BM25 or hybrid, with
filters on document fields), ``POST /multihop`` (MDR beam search, optional BM25 fusion),
``POST /answer`` (a reader over given passages, or retrieve then read; Block Skim as an option),
``POST /encode``, ``GET /health``, ``GET /stats``, and a web page at ``/``. Concurrent requests'
query texts are encoded in batches (:mod:`~reprlab.serve.batching`); a new index version is loaded
in the background and swapped in atomically (:mod:`~reprlab.serve.state`).

>>> from reprlab.serve import ServeConfig, Service, create_app     # doctest: +SKIP
>>> app = create_app(Service.from_config(ServeConfig(index="runs/scifact-index")))  # doctest: +SKIP

Modules: ``config`` (what is loaded, the limits), ``schemas`` (pydantic models), ``state`` (index
versions, hot swap, statistics), ``batching``, ``highlight`` (snippets), ``service`` (what each
endpoint computes), ``app`` (the FastAPI layer); the page is ``static/index.html``.
"""

from reprlab.serve.config import Limits, ServeConfig


def __getattr__(name: str):
    if name == "Service":  # lazily: the CLI reads ServeConfig for its options without loading the service
        from reprlab.serve.service import Service

        return Service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_app(service):
    """The FastAPI app over ``service`` (imports FastAPI, the ``serve`` extra, only when called)."""
    from reprlab.errors import require

    require("fastapi", "serve")
    from reprlab.serve.app import create_app as build

    return build(service)


__all__ = ["Limits", "ServeConfig", "Service", "create_app"]
