"""The FastAPI application: endpoints, error bodies, the body-size guard, request statistics, the web page.

``create_app(service)`` builds the app over a loaded :class:`~reprlab.serve.service.Service`.
Endpoints that the service cannot answer are not registered (``/multihop`` without a multi-hop
index, ``/answer`` without a reader), so the OpenAPI schema lists exactly what is served.

Every answer that is not a success is JSON (:class:`~reprlab.serve.schemas.ErrorResponse`): 422
for a request outside the schema (each field at fault named, dotted), 400 for a request the
library refuses (e.g. a filter on a field the documents lack), 413 for a body over the limit,
404/405 for unknown paths and methods. CPU work (BM25, filters, MDR, the reader) runs in worker
threads; query encoding and the dense index search go through the batcher (one search per batch).
"""

import logging
import time
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from reprlab.errors import ConfigError, ReprlabError
from reprlab.serve import schemas
from reprlab.serve.schemas import ErrorResponse
from reprlab.serve.service import Service

logger = logging.getLogger("reprlab")
ERRORS = {400: {"model": ErrorResponse, "description": "a request the service refuses (the field is named)"},
          413: {"model": ErrorResponse, "description": "the body is larger than the limit"},
          422: {"model": ErrorResponse, "description": "a request outside the schema (each field is named)"}}


def error_body(message: str, errors=()) -> dict:
    return {"error": message, "errors": [{"field": f, "message": m} for f, m in errors]}


def _field(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) if parts and not (len(loc) == 2 and isinstance(loc[1], int) and loc[0] == "body") \
        else "body"


class Guard:
    """ASGI middleware: bodies over ``max_bytes`` get a 413 before the app reads them; every answer of a
    known endpoint is counted and timed in ``stats``."""

    def __init__(self, app, max_bytes: int, stats, endpoints: set[str]):
        self.app, self.max_bytes, self.stats, self.endpoints = app, max_bytes, stats, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        endpoint = scope["path"] if scope["path"] in self.endpoints else None

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body, too_large = await self._read(scope, receive)
            if too_large:
                return await self._reply(send_status, 413, error_body(
                    f"the body is larger than the limit of {self.max_bytes} bytes", [("body", "too large")]))
            sent = [False]

            async def replay():
                if not sent[0]:
                    sent[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_status)
        finally:
            if endpoint is not None:
                self.stats.record(endpoint, status[0], time.perf_counter() - start)

    async def _read(self, scope, receive) -> tuple[bytes, bool]:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return b"", True
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return b"", True
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks), False

    @staticmethod
    async def _reply(send, status: int, body: dict) -> None:
        response = JSONResponse(body, status_code=status)
        await response({"type": "http"}, None, send)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        items = [(_field(e.get("loc", ())), str(e.get("msg", "invalid"))) for e in exc.errors()]
        fields = ", ".join(dict.fromkeys(f for f, _ in items))
        return JSONResponse(error_body(f"invalid request: {fields}", items), status_code=422)

    @app.exception_handler(ReprlabError)
    async def refused(request: Request, exc: ReprlabError):
        field = exc.field if isinstance(exc, ConfigError) and exc.field else "body"
        detail = exc.detail if isinstance(exc, ConfigError) else str(exc)
        return JSONResponse(error_body(str(exc), [(field, detail)]), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # a bug: logged, and still a JSON body
        logger.exception(f"{request.url.path}: internal error")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}"), status_code=500)


def _add_search_routes(app: FastAPI, service: Service, M) -> None:
    @app.post("/search", response_model=schemas.SearchResponse, responses=ERRORS, tags=["search"],
              summary="dense, BM25 or hybrid search, with optional filters on document fields")
    async def search(req: M.SearchRequest):
        t0 = time.perf_counter()
        version = service.slot.current  # this request's version, to its end
        service.check_filters(version, req.filters)
        dense = await service.dense_run(version, req.query, req.mode, req.k, req.filters) if req.mode != "bm25" \
            else None  # encoded and searched with the batch this request joins
        if req.mode == "dense" and not req.filters:  # ranked already: no worker thread needed
            found = service.search(version, req.query, None, req.mode, req.k, dense=dense)
        else:
            found = await run_in_threadpool(service.search, version, req.query, None, req.mode, req.k, req.filters,
                                            dense)
        return {"query": req.query, "mode": req.mode, "index_version": version.name,
                "took_ms": (time.perf_counter() - t0) * 1000,
                "results": service.hits(version, found, req.query, req.highlight)}

    @app.post("/encode", response_model=schemas.EncodeResponse, responses=ERRORS, tags=["search"],
              summary="vectors of texts by the index's query encoder (batched with concurrent requests)")
    async def encode(req: M.EncodeRequest):
        t0 = time.perf_counter()
        version = service.slot.current
        r = version.retriever
        vectors = await service.batcher.encode(r.model, list(req.texts), None, r.precision)
        return {"model": str(r.model_name), "dim": int(vectors.shape[1]), "index_version": version.name,
                "took_ms": (time.perf_counter() - t0) * 1000, "vectors": np.asarray(vectors, np.float64).tolist()}

    if service.multihop is not None:
        @app.post("/multihop", response_model=schemas.MultihopResponse, responses=ERRORS, tags=["search"],
                  summary="two-hop passage chains (MDR beam search), optionally fused with BM25")
        async def multihop(req: M.MultihopRequest):
            import asyncio

            t0 = time.perf_counter()
            chains = await run_in_threadpool(service.multihop_chains, req.question, req.k, req.beam,
                                             req.bm25_weights, asyncio.get_running_loop())
            return {"question": req.question, "index_version": service.multihop.name,
                    "took_ms": (time.perf_counter() - t0) * 1000, "chains": chains}


def _add_answer_route(app: FastAPI, service: Service, M) -> None:
    @app.post("/answer", response_model=schemas.AnswerResponse, responses=ERRORS, tags=["qa"],
              summary="extract answers from given passages, or from the top-k passages of a search")
    async def answer(req: M.AnswerRequest):
        t0 = time.perf_counter()
        version_name, ids, titles = None, None, None
        passages = list(req.passages) if req.passages is not None else None
        if passages is None:
            version = service.slot.current
            dense = await service.dense_run(version, req.question, req.mode, req.k) if req.mode != "bm25" else None
            found = await run_in_threadpool(service.search, version, req.question, None, req.mode, req.k, (), dense)
            version_name, ids = version.name, [f.id for f in found]
            passages = [version.docs[i].get("text", "") or " " for i in ids]
            titles = [version.docs[i].get("title", "") or "" for i in ids]
        answers, skimmed = ([], False) if not passages else await run_in_threadpool(
            service.read, req.question, passages, req.top, req.block_skim, ids, titles)
        return {"question": req.question, "index_version": version_name, "block_skim": skimmed,
                "took_ms": (time.perf_counter() - t0) * 1000, "answers": answers}


def _add_info_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health", response_model=schemas.HealthResponse, tags=["info"], summary="liveness and the index version")
    async def health():
        return {"status": "ok", "index_version": service.slot.current.name}

    @app.get("/stats", response_model=schemas.StatsResponse, tags=["info"],
             summary="counts, model, index version and latency percentiles")
    async def stats():
        version = service.slot.current
        s = service.stats
        return {"uptime_s": time.time() - s.started, "model": str(version.retriever.model_name),
                "backend": service.encoders.backend, "index_version": version.name, "documents": len(version.index),
                "swaps": service.slot.swaps, "endpoints": service.endpoints, "requests": dict(s.requests),
                "errors": dict(s.errors), "latency": s.latency(), "batches": service.batcher.batches,
                "batched_texts": service.batcher.texts, "batch_seconds": service.batcher.seconds,
                "encode_workers": service.batcher.workers, "encode_threads": service.batcher.worker_threads()}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("reprlab.serve").joinpath("static", "index.html").read_text("utf-8"))


def create_app(service: Service) -> FastAPI:
    """The app over ``service`` (see the module docstring); the service starts and stops with the app."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="reprlab", version="1", lifespan=lifespan,
                  description="Search, multi-hop retrieval and question answering over a reprlab index.")
    M = schemas.request_models(service.limits, sorted(service.slot.current.fields),
                               getattr(service.reader, "skim_config", None) is not None)
    _add_error_handlers(app)
    _add_search_routes(app, service, M)
    if service.reader is not None:
        _add_answer_route(app, service, M)
    _add_info_routes(app, service)
    app.add_middleware(Guard, max_bytes=service.limits.max_body_bytes, stats=service.stats,
                       endpoints=set(service.endpoints))
    return app
