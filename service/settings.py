"""Gateway settings: environment variables prefixed `SIDSERVE_`, or a settings file
(`sidserve serve --settings FILE`, dotenv format). Every field is documented in
docs/gateway.md."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIDSERVE_", extra="forbid")

    bundle: Path = Field(description="bundle directory written by `sidserve export`")
    redis_url: str | None = Field(None, description="Redis store; unset = in-process store")
    triton_url: str | None = Field(
        None, description="Triton gRPC host:port; unset = in-process ONNX Runtime"
    )
    triton_encoder: str = "sid_encoder"
    triton_decoder_first: str = "sid_decoder_first"
    triton_decoder: str = "sid_decoder"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # request limits (bad input beyond them is a 422 naming the field)
    max_queries: int = Field(64, ge=1, description="queries per /v1/query/sids request")
    max_items: int = Field(256, ge=1, description="items per /v1/items/encode request")
    max_relevance_items: int = Field(1000, ge=1, description="item ids per /v1/relevance")
    max_delete_items: int = Field(1000, ge=1, description="item ids per /v1/items/delete")
    max_text_chars: int = Field(2000, ge=1, description="characters per query or item text")
    max_body_bytes: int = Field(
        8 * 2**20, ge=1, description="bytes per request body; a larger one is a 413"
    )
    max_beam_width: int = Field(64, ge=1)
    max_candidates: int = Field(1000, ge=0)
    rerank_pool: int = Field(
        500,
        ge=1,
        description="candidates read from the store in beam order and re-ordered by "
        "similarity, of which the first `candidates` are returned (orders 'similarity' and "
        "'depth')",
    )
    # micro-batching of queries (embedded and Triton backends alike)
    batch_max_queries: int = Field(8, ge=1, description="queries per decoder batch")
    batch_max_wait_ms: float = Field(
        0.0, ge=0, description="how long a lone query waits for company"
    )
    batch_length_window: int = Field(
        0,
        ge=0,
        description="queued queries among which a batch prefers those closest to the oldest "
        "one's token length (less padding, more queries/s, a longer tail); up to "
        "batch_max_queries = first come, first served",
    )
    queue_limit: int = Field(1024, ge=1, description="queued queries before 503")
    workers: int = Field(2, ge=1, description="batches run side by side (worker threads)")
    worker_nice: int = Field(
        5,
        ge=0,
        le=19,
        description="niceness the worker threads add to their own (Linux; 0 = off): the event "
        "loop, which feeds them batches and answers requests, gets the CPU before them",
    )
    huge_pages: bool = Field(
        True,
        description="`sidserve serve` restarts itself once with glibc's malloc tunable for "
        "transparent huge pages, which then hold the graphs' weights (Linux, glibc)",
    )
    onnx_threads: int = Field(
        1, ge=0, description="ONNX Runtime intra-op threads per call (0 = one per core)"
    )
    onnx_lone_threads: int = Field(
        2,
        ge=1,
        description="ONNX Runtime intra-op threads for a query batch that runs alone (no other "
        "batch in flight, none queued), capped at the CPUs this process may use; a second set "
        "of sessions, only when that is more than onnx_threads (1 = off; embedded only)",
    )
    # timeouts: an unavailable dependency gives 503 + Retry-After, never a hang
    inference_timeout_s: float = Field(5.0, gt=0)
    triton_reconnect_max_s: float = Field(
        1.0,
        gt=0,
        description="longest wait between gRPC reconnection attempts while Triton is away, "
        "so the gateway answers again at most this long after Triton is back",
    )
    triton_check_s: float = Field(
        5.0,
        ge=0,
        description="how often the gateway reads the sid_model_version of the models Triton "
        "serves (and before the first inference after Triton was unreachable), refusing "
        "inference with 503 while it is not the bundle's (0 = at /readyz only)",
    )
    store_timeout_s: float = Field(1.0, gt=0)
    trie_refresh_s: float = Field(
        5.0,
        ge=0,
        description="with Redis: how often the gateway checks whether other gateways' upserts "
        "and deletes changed the live semantic paths, so its beams reach new ones and skip "
        "emptied ones (0 = never)",
    )
    retry_after_s: int = Field(1, ge=0)
    verify_checksums: bool = Field(True, description="hash every bundle file at start-up")


def load_settings(settings_file: Path | None = None, **overrides) -> Settings:
    if settings_file is not None and not settings_file.is_file():
        raise FileNotFoundError(f"{settings_file}: settings file not found")
    return Settings(_env_file=settings_file, **overrides)  # type: ignore[call-arg]


# SIDSERVE_ variables that belong to other parts of the project, not to the gateway
OTHER_VARIABLES = frozenset(
    {
        "SIDSERVE_CACHE_DIR",  # training's cache of token states and embeddings
        "SIDSERVE_BUNDLE_DIR",  # docker compose: host paths and image tag
        "SIDSERVE_TRITON_REPO",
        "SIDSERVE_TAG",
        "SIDSERVE_TRITON_BUNDLE",  # the Triton tests' bundle
    }
)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per SIDSERVE_ variable no setting reads, with the closest setting's name:
    pydantic-settings ignores them, so a misspelt SIDSERVE_REDIS_URI would otherwise leave
    the gateway on its in-process store without a word."""
    known = sorted(name.upper() for name in Settings.model_fields)
    lines = []
    for name in sorted(environ):
        if not name.startswith("SIDSERVE_") or name in OTHER_VARIABLES:
            continue
        if (rest := name.removeprefix("SIDSERVE_")) in known:
            continue
        close = difflib.get_close_matches(rest, known, n=1, cutoff=0.75)
        hint = f"; did you mean SIDSERVE_{close[0]}?" if close else ""
        lines.append(f"{name} is not a gateway setting and is ignored{hint}")
    return lines
