"""`sidserve serve`: run the gateway (uvicorn) on a bundle."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, help="bundle directory (or SIDSERVE_BUNDLE)")
    parser.add_argument("--settings", type=Path, help="settings file (dotenv format)")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8000)")
    parser.add_argument("--redis-url", help="Redis store (default: in-process store)")
    parser.add_argument("--triton-url", help="Triton gRPC host:port (default: ONNX Runtime)")


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.http_protocol import coalescing_protocol
    from service.huge_pages import restart_with_huge_pages
    from service.settings import load_settings, unknown_variables

    overrides = {
        k: v
        for k, v in {
            "bundle": args.bundle,
            "host": args.host,
            "port": args.port,
            "redis_url": args.redis_url,
            "triton_url": args.triton_url,
        }.items()
        if v is not None
    }
    try:
        settings = load_settings(args.settings, **overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{_variable(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"bad settings: {problems} (see docs/gateway.md#settings)") from exc
    # before anything large is allocated; only a process started for this command restarts
    if settings.huge_pages and args.own_process:
        restart_with_huge_pages()
    for line in unknown_variables(os.environ):
        logging.getLogger("sidserve.serve").warning("%s", line)
    _refuse_a_taken_port(settings.host, settings.port)  # before seconds of loading
    app = create_app(settings)
    http = coalescing_protocol() or "auto"  # one socket write per response where it can
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        http=http,  # type: ignore[arg-type]
    )
    return 0


def _variable(loc: tuple) -> str:
    """A settings error's location as the variable's name: a field (`redis_url`) or, for an
    unknown key of the settings file, the key itself (`sidserve_colour`)."""
    name = "_".join(map(str, loc)).upper()
    return name if name.startswith("SIDSERVE_") else f"SIDSERVE_{name}"


def _refuse_a_taken_port(host: str, port: int) -> None:
    """One line now, rather than uvicorn's bind error after the bundle was loaded and
    checksummed. uvicorn binds with SO_REUSEADDR too, so what this refuses it would."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} (another process, or "
                "set SIDSERVE_PORT / --port)"
            ) from exc
