"""Triton Inference Server over async gRPC (`tritonclient.grpc.aio`).

The batcher's worker thread calls `encode` / `decode_first` / `decode_step`; each call is
scheduled on the gateway's event loop (where the aio client lives) and waited for with a
bound, so a stalled server becomes BackendUnavailable, never a hang. In the model configs
`level` has dims [1] reshaped to a scalar per batch element, so it is sent as (B, 1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np

from service.backends.base import BackendUnavailable


def served_model_version(config: dict[str, Any]) -> str | None:
    """The `sid_model_version` parameter of a model config (`get_model_config(as_json=True)`:
    {"config": {"parameters": {key: {"string_value": ...}}}})."""
    parameters = config["config"].get("parameters", {})
    return parameters.get("sid_model_version", {}).get("string_value")


def channel_args(reconnect_max_s: float) -> list[tuple[str, int]]:
    """tritonclient's own channel options (message sizes, keep-alive), which passing any
    options replaces, plus a cap on gRPC's reconnection backoff.

    gRPC waits 1 s, then 1.6 times longer after each failed attempt, up to 120 s: a gateway
    whose Triton was away for 200 s went on answering 503 for 94 s after Triton was ready
    again (measured against the real tritonserver, 2026-12-06). With the cap it tries at
    least every `reconnect_max_s`."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    backoff_ms = max(1, round(reconnect_max_s * 1000))
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", min(1000, backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
    ]


class TritonBackend:
    name = "triton"
    lone = None  # the server schedules its own instances

    def __init__(
        self,
        url: str,
        encoder: str,
        decoder_first: str,
        decoder: str,
        timeout_s: float,
        reconnect_max_s: float = 1.0,
        model_version: str | None = None,
    ) -> None:
        from tritonclient.grpc import aio as grpcclient

        self._grpc = grpcclient
        self.url, self.encoder_model, self.decoder_model = url, encoder, decoder
        self.decoder_first_model = decoder_first
        self.timeout_s = timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.model_version = model_version  # the bundle's; None = not checked
        self.client: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create the aio client on the gateway's running loop (gRPC aio needs one)."""
        self.loop = loop
        self.client = self._grpc.InferenceServerClient(
            url=self.url, channel_args=channel_args(self.reconnect_max_s)
        )

    def _wait(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self.loop is None:
            raise RuntimeError("TritonBackend.bind(loop) was not called")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout=self.timeout_s + 0.5)
        except TimeoutError as exc:
            fut.cancel()
            raise BackendUnavailable(
                f"Triton at {self.url}: no answer in {self.timeout_s}s"
            ) from exc
        except BackendUnavailable:
            raise
        except Exception as exc:  # InferenceServerException, grpc errors
            raise BackendUnavailable(f"Triton at {self.url}: {exc}") from exc

    async def _infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> list[np.ndarray]:
        g = self._grpc
        reqs = []
        for name, arr in inputs.items():
            dtype = "FP32" if arr.dtype == np.float32 else "INT64"
            x = g.InferInput(name, list(arr.shape), dtype)
            x.set_data_from_numpy(np.ascontiguousarray(arr))
            reqs.append(x)
        result = await self.client.infer(
            model,
            reqs,
            outputs=[g.InferRequestedOutput(name) for name in outputs],
            client_timeout=self.timeout_s,
        )
        return [result.as_numpy(name) for name in outputs]

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask}
        return self._wait(self._infer(self.encoder_model, feeds, ["memory"]))[0]

    def decode_first(
        self, memory: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feeds = {"memory": memory.astype(np.float32, copy=False), "attention_mask": mask}
        outputs = ["logits", "present", "cross_kv"]
        logits, present, cross_kv = self._wait(
            self._infer(self.decoder_first_model, feeds, outputs)
        )
        return logits, present, cross_kv

    def decode_step(
        self,
        cross_kv: np.ndarray,
        mask: np.ndarray,
        prefix: np.ndarray,
        level: np.ndarray,
        past: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        feeds = {
            "cross_kv": cross_kv.astype(np.float32, copy=False),
            "attention_mask": mask,
            "prefix": prefix,
            "level": level.reshape(-1, 1),
            "past": past,
        }
        logits, present = self._wait(self._infer(self.decoder_model, feeds, ["logits", "present"]))
        return logits, present

    async def check(self) -> None:
        models = [self.encoder_model, self.decoder_first_model, self.decoder_model]
        ready = await self._ask_each(models, self.client.is_model_ready)
        missing = [m for m, ok in zip(models, ready, strict=True) if not ok]
        if missing:
            raise BackendUnavailable(f"Triton at {self.url}: not ready: {', '.join(missing)}")
        if self.model_version is not None:
            await self._check_model_version(models)

    async def _ask_each(self, models: list[str], ask: Callable[[str], Awaitable[Any]]) -> list[Any]:
        """One request per model, side by side, bounded by the timeout; any failure is
        BackendUnavailable naming the server."""
        try:
            return await asyncio.wait_for(asyncio.gather(*(ask(m) for m in models)), self.timeout_s)
        except Exception as exc:
            raise BackendUnavailable(f"Triton at {self.url}: {exc or type(exc).__name__}") from exc

    async def _check_model_version(self, models: list[str]) -> None:
        """Every model Triton serves carries the gateway bundle's `sid_model_version`
        (export/triton_repo.py writes it into each config). A gateway pointed at the Triton
        of another export would otherwise search its own trie with another model's scores:
        valid-looking SIDs, all wrong."""
        configs = await self._ask_each(
            models, lambda m: self.client.get_model_config(m, as_json=True)
        )
        served = {m: served_model_version(c) for m, c in zip(models, configs, strict=True)}
        wrong = {m: v for m, v in served.items() if v != self.model_version}
        if wrong:
            found = ", ".join(f"{m} {v or 'without a sid_model_version'}" for m, v in wrong.items())
            raise BackendUnavailable(
                f"Triton at {self.url} serves another model: {found}; this gateway's bundle "
                f"is {self.model_version} (point SIDSERVE_TRITON_URL at the Triton whose "
                "repository was exported with this bundle)"
            )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
