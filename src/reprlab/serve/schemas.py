"""Request and response models of the service (pydantic), so that the OpenAPI schema is exact.

Request models are built per service by :func:`request_models`: their bounds are the service's
:class:`~reprlab.serve.config.Limits`, so the schema states the limits the service enforces. Every
request model forbids unknown fields; strings must hold a non-space character and be valid UTF-8
(a lone surrogate is a 422, not an error deep in the tokenizer).
"""

from types import SimpleNamespace
from typing import Annotated, Literal, Sequence

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from reprlab.serve.config import Limits

MODES = ("dense", "bm25", "hybrid")
FILTER_OPS = ("equals", "contains", "prefix")


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text (it holds a lone surrogate)") from None
    return text


def text_field(max_chars: int, what: str):
    """A str of 1..max_chars characters with a non-space character, valid UTF-8."""
    return Annotated[str, Field(min_length=1, max_length=max_chars, pattern=r"\S", description=what),
                     AfterValidator(_utf8)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- responses


class ErrorItem(BaseModel):
    field: str = Field(description="the request field at fault, dotted (e.g. 'k', 'filters.0.field'; 'body')")
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong, in one line")
    errors: list[ErrorItem] = Field(default_factory=list, description="one entry per field at fault")


class Span(BaseModel):
    start: int = Field(ge=0, description="first character (0-based)")
    end: int = Field(ge=0, description="one past the last character")


class Hit(BaseModel):
    rank: int = Field(ge=1)
    id: str
    score: float
    title: str
    snippet: str = Field(description="a window of the document's text around the query's terms")
    highlights: list[Span] = Field(description="the query's terms in the snippet")
    title_highlights: list[Span] = Field(description="the query's terms in the title")


class SearchResponse(BaseModel):
    query: str
    mode: Literal["dense", "bm25", "hybrid"]
    index_version: str = Field(description="the index version every result came from")
    took_ms: float
    results: list[Hit]


class Chain(BaseModel):
    rank: int = Field(ge=1)
    score: float = Field(description="hop-1 score + hop-2 score")
    hops: list[Hit] = Field(min_length=2, max_length=2, description="hop 1, then hop 2")


class MultihopResponse(BaseModel):
    question: str
    index_version: str
    took_ms: float
    chains: list[Chain]


class AnswerItem(BaseModel):
    rank: int = Field(ge=1)
    text: str
    score: float
    passage_index: int = Field(ge=0, description="which passage the span is in")
    passage_id: str | None = Field(description="the document id when the passages were retrieved")
    title: str
    passage: str = Field(description="the passage the answer was read from")
    start: int = Field(ge=0, description="the answer's first character in the passage")
    end: int = Field(ge=0, description="one past its last character")


class AnswerResponse(BaseModel):
    question: str
    index_version: str | None = Field(description="the index version of the retrieved passages (null when given)")
    block_skim: bool = Field(description="whether the reader skimmed (Block Skim) while reading")
    took_ms: float
    answers: list[AnswerItem]


class EncodeResponse(BaseModel):
    model: str
    dim: int
    index_version: str
    took_ms: float
    vectors: list[list[float]]


class HealthResponse(BaseModel):
    status: Literal["ok"]
    index_version: str


class Latency(BaseModel):
    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class StatsResponse(BaseModel):
    uptime_s: float
    model: str
    backend: str
    index_version: str
    documents: int
    swaps: int
    endpoints: list[str] = Field(description="the endpoints this service offers")
    requests: dict[str, int] = Field(description="requests answered per endpoint (any status)")
    errors: dict[str, int] = Field(description="4xx answers per endpoint")
    latency: dict[str, Latency] = Field(description="over the last 2,000 answers of each endpoint")
    batches: int = Field(description="forward passes of the query encoder")
    batched_texts: int = Field(description="texts those passes encoded")
    batch_seconds: float = Field(description="wall seconds the batcher's workers spent encoding (and searching) "
                                 "batches, summed over the workers: busy time of the query encoder")
    encode_workers: int = Field(description="batches the query encoder can run at once (worker threads)")
    encode_threads: int = Field(description="torch threads of each encode worker")


# ----------------------------------------------------------------------------- requests


def request_models(limits: Limits, fields: Sequence[str] = ("id", "title", "text"),
                   block_skim: bool = True) -> SimpleNamespace:
    """The request models with ``limits`` as their bounds (see the module docstring); ``fields``: the document
    fields filters may test; ``block_skim``: whether the reader can skim (else the option may only be false)."""
    QueryText = text_field(limits.max_query_chars, "the query")  # noqa: N806 - types
    K = Annotated[int, Field(ge=1, le=limits.max_k, description="results wanted")]  # noqa: N806
    Mode = Literal["dense", "bm25", "hybrid"]  # noqa: N806

    class FieldFilter(Strict):
        field: Literal[tuple(sorted(fields))] = Field(description="a document field")
        op: Literal["equals", "contains", "prefix"] = Field("contains", description="case-insensitive test")
        value: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_utf8)]

    class SearchRequest(Strict):
        query: QueryText
        k: K = 10
        mode: Mode = Field("dense", description="dense, bm25, or hybrid (reciprocal-rank fusion of both)")
        filters: list[FieldFilter] = Field(default_factory=list, max_length=8,
                                           description="every filter must hold for a document to be returned")
        highlight: bool = Field(True, description="snippets around the query's terms, with the terms highlighted "
                                "(false: each snippet is the text's beginning and nothing is highlighted; faster)")

    class MultihopRequest(Strict):
        question: QueryText
        k: K = Field(5, description="chains wanted")
        beam: Annotated[int, Field(ge=1, le=limits.max_beam)] = Field(10, description="MDR beam size")
        bm25_weights: tuple[Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)],
                            Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]] | None = Field(
            None, description="fuse BM25 into hop 1 and hop 2 with these weights (null: dense only)")

    class AnswerRequest(Strict):
        question: QueryText
        passages: list[text_field(limits.max_passage_chars, "a passage")] | None = Field(
            None, min_length=1, max_length=limits.max_passages,
            description="passages to read; null: retrieve k passages from the index first")
        k: Annotated[int, Field(ge=1, le=limits.max_passages)] = Field(5, description="passages retrieved")
        mode: Mode = "dense"
        top: Annotated[int, Field(ge=1, le=10)] = Field(1, description="answers wanted")
        block_skim: (bool if block_skim else Literal[False]) | None = Field(None, description="skim with the reader's Block Skim predictors "
                                        "(null: when the reader has them)")

    class EncodeRequest(Strict):
        texts: list[text_field(limits.max_text_chars, "a text")] = Field(min_length=1, max_length=limits.max_texts)

    return SimpleNamespace(SearchRequest=SearchRequest, MultihopRequest=MultihopRequest,
                           AnswerRequest=AnswerRequest, EncodeRequest=EncodeRequest, FieldFilter=FieldFilter)
