"""Triton Inference Server over async gRPC (`tritonclient.grpc.aio`).

The batcher's worker thread calls `encode` / `decode_first` / `decode_step`; each call is
scheduled on the gateway's event loop (where the aio client lives) and waited for with a
bound, so a stalled server becomes BackendUnavailable, never a hang. In the model configs
`level` has dims [1] reshaped to a scalar per batch element, so it is sent as (B, 1).
"""

from __future__ import annotations

import asyncio
import contextlib
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
        check_s: float = 0.0,
    ) -> None:
        from tritonclient.grpc import aio as grpcclient

        self._grpc = grpcclient
        self.url, self.encoder_model, self.decoder_model = url, encoder, decoder
        self.decoder_first_model = decoder_first
        self.timeout_s = timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.model_version = model_version  # the bundle's; None = not checked
        self.check_s = check_s  # 0 = the model version is checked by /readyz only
        self.client: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # what the last reading of the models' sid_model_version said: None = this bundle's,
        # else the refusal every inference gets; `_verified` is False until a reading since
        # Triton was last unreachable (a restart may bring up another repository)
        self._mismatch: str | None = None
        self._verified = False
        self._verifying: asyncio.Lock | None = None
        self._watcher: asyncio.Task[None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create the aio client on the gateway's running loop (gRPC aio needs one)."""
        self.loop = loop
        self.client = self._grpc.InferenceServerClient(
            url=self.url, channel_args=channel_args(self.reconnect_max_s)
        )
        if self._guarded:
            self._verifying = asyncio.Lock()
            self._watcher = loop.create_task(self._watch())

    @property
    def _guarded(self) -> bool:
        """Every inference is checked against the served model version (`check_s` > 0)."""
        return self.model_version is not None and self.check_s > 0

    async def _watch(self) -> None:
        """Read the served model versions every `check_s`: a Triton whose repository changed
        under a running gateway (an in-place export with polling, a restart on another
        repository) is refused within that period instead of scoring this gateway's trie
        with another model's logits, and accepted again once it serves this bundle."""
        while True:
            with contextlib.suppress(BackendUnavailable):
                await self._verify()
            await asyncio.sleep(self.check_s)

    async def _verify(self) -> None:
        """One reading of the served model versions; BackendUnavailable if Triton does not
        answer (then the next inference reads them again before it runs)."""
        models = [self.encoder_model, self.decoder_first_model, self.decoder_model]
        try:
            self._mismatch = await self._version_mismatch(models)
        except BackendUnavailable:
            self._verified = False
            raise
        self._verified = True

    async def _admit(self) -> None:
        """Before an inference: a reading since Triton was last unreachable (one shared by
        the requests waiting for it), and that it found this bundle's model."""
        if not self._verified and self._verifying is not None:
            async with self._verifying:
                if not self._verified:
                    await self._verify()
        if self._mismatch is not None:
            raise BackendUnavailable(self._mismatch)

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
        if self._guarded:
            await self._admit()
        g = self._grpc
        reqs = []
        for name, arr in inputs.items():
            dtype = "FP32" if arr.dtype == np.float32 else "INT64"
            x = g.InferInput(name, list(arr.shape), dtype)
            x.set_data_from_numpy(np.ascontiguousarray(arr))
            reqs.append(x)
        try:
            result = await self.client.infer(
                model,
                reqs,
                outputs=[g.InferRequestedOutput(name) for name in outputs],
                client_timeout=self.timeout_s,
            )
        except Exception:
            self._verified = False  # it may come back as another repository
            raise
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
            await self._verify()
            if self._mismatch is not None:
                raise BackendUnavailable(self._mismatch)

    async def _ask_each(self, models: list[str], ask: Callable[[str], Awaitable[Any]]) -> list[Any]:
        """One request per model, side by side, bounded by the timeout; any failure is
        BackendUnavailable naming the server."""
        try:
            return await asyncio.wait_for(asyncio.gather(*(ask(m) for m in models)), self.timeout_s)
        except Exception as exc:
            raise BackendUnavailable(f"Triton at {self.url}: {exc or type(exc).__name__}") from exc

    async def _version_mismatch(self, models: list[str]) -> str | None:
        """None if every model Triton serves carries the gateway bundle's `sid_model_version`
        (export/triton_repo.py writes it into each config), else what to answer instead. A
        gateway pointed at the Triton of another export would otherwise search its own trie
        with another model's scores: valid-looking SIDs, all wrong."""
        configs = await self._ask_each(
            models, lambda m: self.client.get_model_config(m, as_json=True)
        )
        served = {m: served_model_version(c) for m, c in zip(models, configs, strict=True)}
        wrong = {m: v for m, v in served.items() if v != self.model_version}
        if not wrong:
            return None
        found = ", ".join(f"{m} {v or 'without a sid_model_version'}" for m, v in wrong.items())
        return (
            f"Triton at {self.url} serves another model: {found}; this gateway's bundle "
            f"is {self.model_version} (point SIDSERVE_TRITON_URL at the Triton whose "
            "repository was exported with this bundle)"
        )

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self.client is not None:
            await self.client.close()
