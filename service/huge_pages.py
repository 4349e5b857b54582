"""Transparent huge pages for the model's weights, through glibc's malloc.

A lone query streams every weight of the graphs from memory (the encoder's layers are
42 MB, well past the 16 MB cache), so its encoder time is mostly bandwidth and address
translation: with 4 KB pages that is ~10,000 page-table walks per query. ONNX Runtime
allocates its weights with malloc, which glibc (2.35 on) marks for huge pages when the
tunable `glibc.malloc.hugetlb=1` is set, and tunables are only read when a process starts.
So `sidserve serve` restarts itself once with it (`SIDSERVE_HUGE_PAGES`, docs/gateway.md
§ Settings). A lone query's encoder took 3.13 rather than 3.30 ms with it (Zen 2 host,
2 threads, 200 dev queries, one-off).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_page_env(environ: Mapping[str, str], thp_mode: Path = THP_MODE) -> dict[str, str] | None:
    """The environment to restart with, or None where that would change nothing: not Linux
    with glibc, huge pages turned off in the kernel (`[never]`), or the tunable already set
    (by an earlier start, or by the operator, whose value is kept)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in current:
        return None
    try:
        if "[never]" in thp_mode.read_text():
            return None
    except OSError:
        return None
    wanted = f"{TUNABLE}=1"
    return {**environ, "GLIBC_TUNABLES": f"{current}:{wanted}" if current else wanted}


def restart_with_huge_pages(environ: Mapping[str, str] = os.environ) -> None:
    """Replace this process by the same command line with the tunable set (same process id;
    does not return), where `huge_page_env` says it would change something. If the restart
    fails, log why and return: the gateway then serves without huge pages."""
    env = huge_page_env(environ)
    if env is None or not sys.executable:
        return
    sys.stdout.flush()  # exec drops what Python still buffers
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError as exc:
        logging.getLogger("sidserve.serve").warning(
            "could not restart with huge pages (%s); serving without them", exc
        )
