"""Request and response models of the `/v1` API (pydantic v2). Unknown fields are rejected,
so a misspelt option is a 422 naming it rather than a silently ignored default, and request
values must have their JSON type (strict mode): `true` or `"10"` for an integer, or `"yes"`
for a boolean, is a 422 too, not a 1, a 10 or a silent true.

Limits that depend on the deployment (batch sizes, text length, beam width) are checked in
`serving.py` against the settings; the bounds here are the ones that hold everywhere.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _unicode(value: str) -> str:
    """JSON's \\uD800-style escapes can carry half of a UTF-16 pair, which no tokenizer or
    store can encode: refuse it here, naming the field, instead of failing deeper down."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"holds an unpaired UTF-16 surrogate at character {exc.start}; send valid Unicode"
        ) from None
    return value


# every string a request carries
Text = Annotated[str, AfterValidator(_unicode)]


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace")
    return value


class BeamOptions(Strict):
    beam_width: int = Field(10, ge=1, description="beams kept per level of the search")
    top_k: int = Field(10, ge=1, description="SIDs returned per query (<= beam_width)")

    @model_validator(mode="after")
    def _top_k_within_beam(self) -> BeamOptions:
        if self.top_k > self.beam_width:
            raise ValueError(f"top_k ({self.top_k}) must be <= beam_width ({self.beam_width})")
        return self


class SearchOptions(BeamOptions):
    candidates: int = Field(
        100, ge=0, description="most items returned per query; 0 returns SIDs only"
    )
    min_depth: int = Field(
        1, ge=0, description="shallowest prefix match (levels) a candidate may have"
    )


class QuerySidsRequest(SearchOptions):
    """One query (`query`) or a batch (`queries`), not both."""

    query: Text | None = Field(None, description="a single search query")
    queries: list[Text] | None = Field(None, description="a batch of search queries")
    order: Literal["similarity", "depth", "beam"] | None = Field(
        None,
        description="order of the candidates: 'similarity' (the first SIDSERVE_RERANK_POOL "
        "candidates in beam order, by the query's cosine with the item's dense vector alone), "
        "'depth' (max_depth, then that cosine) or 'beam' (max_depth, best_rank, then catalog "
        "order); default 'similarity' when the bundle has item vectors, else 'beam'",
    )

    @field_validator("query")
    @classmethod
    def _query_text(cls, v: str | None) -> str | None:
        return None if v is None else _non_blank(v)

    @field_validator("queries")
    @classmethod
    def _queries_text(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("must hold at least one query")
        for i, q in enumerate(v):
            if not q.strip():
                raise ValueError(f"item {i} is empty or whitespace")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> QuerySidsRequest:
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of 'query' or 'queries'")
        return self

    def texts(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries or [])


class Sid(BaseModel):
    sid: str = Field(description="stable string form, codes joined by '-', e.g. '12-5-201'")
    codes: list[int]
    log_prob: float = Field(description="sum of per-level log-probabilities")
    rank: int = Field(description="0 = best")


class Candidate(BaseModel):
    item_id: str
    sid: str = Field(description="the item's full SID: semantic codes + disambiguation")
    matched_depth: list[int] = Field(description="shared prefix length with each query SID")
    max_depth: int
    prefix_score: float = Field(description="DSIRM score: 0 at depth 0, else 2^(depth - L)")
    best_rank: int | None = Field(description="first query SID reaching max_depth")
    best_log_prob: float | None = Field(description="log-probability of that SID")
    similarity: float | None = Field(
        description="cosine of the query's and the item's dense vectors (the vector of the "
        "item's last upsert, else the bundle's); null when the item has none (a bundle "
        "without vectors)"
    )


class QueryResult(BaseModel):
    query: str
    sids: list[Sid]
    candidates: list[Candidate]


class QuerySidsResponse(BaseModel):
    model_version: str
    results: list[QueryResult]


def _item_id(value: str) -> str:
    if value != value.strip() or "\n" in value or "|" in value:
        raise ValueError("must have no surrounding whitespace, newline or '|'")
    return value


# an item id a request may store (the Redis lists hold "sid|id" entries, one per line)
ItemId = Annotated[Text, Field(min_length=1, max_length=256), AfterValidator(_item_id)]


def _distinct_ids(field: str, ids: list[str]) -> None:
    if len(set(ids)) != len(ids):
        raise ValueError(f"{field}: item_id values must be distinct within a request")


class EncodeItem(Strict):
    item_id: ItemId
    text: Text

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _non_blank(v)


class EncodeRequest(Strict):
    items: list[EncodeItem] = Field(min_length=1)
    upsert: bool = Field(
        False, description="store the SIDs: the items become retrievable by the next query"
    )

    @model_validator(mode="after")
    def _distinct(self) -> EncodeRequest:
        _distinct_ids("items", [i.item_id for i in self.items])
        return self


class EncodedItem(BaseModel):
    item_id: str
    sid: str = Field(description="semantic codes + disambiguation")
    codes: list[int] = Field(description="the semantic codes (levels 1..L)")
    disambiguation: int
    stored: bool = Field(description="written to the store by this request")


class EncodeResponse(BaseModel):
    model_version: str
    items: list[EncodedItem]


class DeleteRequest(Strict):
    item_ids: list[ItemId] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> DeleteRequest:
        _distinct_ids("item_ids", self.item_ids)
        return self


class DeleteResponse(BaseModel):
    model_version: str
    deleted: list[str] = Field(description="ids that were stored, now removed")
    unknown: list[str] = Field(
        description="ids that were not stored (with Redis still recorded as deleted, so that "
        "later loads leave them out)"
    )


class RelevanceRequest(BeamOptions):
    query: Text
    item_ids: list[Text] = Field(min_length=1)

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        return _non_blank(v)


class RelevanceItem(BaseModel):
    item_id: str
    found: bool
    sid: str | None = None
    matched_depth: list[int] | None = None
    max_depth: int | None = None
    prefix_score: float | None = None
    best_rank: int | None = None
    best_log_prob: float | None = None
    similarity: float | None = None


class RelevanceResponse(BaseModel):
    model_version: str
    query: str
    sids: list[Sid]
    items: list[RelevanceItem]
    unknown: list[str] = Field(description="ids not in the store (also marked found=false)")


class ErrorResponse(BaseModel):
    error: str = Field(
        description="kind: invalid_request, payload_too_large, not_found, "
        "method_not_allowed, store_unavailable, backend_unavailable, overloaded, internal"
    )
    message: str
    details: list[dict] | None = None
