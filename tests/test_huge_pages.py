"""`sidserve serve` restarts itself once with glibc's huge-page tunable (service/huge_pages.py)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

from service import huge_pages
from service.huge_pages import THP_MODE, huge_page_env
from service.launcher import running_gateway

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the tunable is glibc's, on Linux; elsewhere the gateway starts as it is",
)


def test_the_tunable_is_added_once_and_an_operators_choice_is_kept(tmp_path: Path) -> None:
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    env = huge_page_env({"A": "1"}, mode)
    assert env == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert huge_page_env(env, mode) is None  # the restarted process does not restart again
    other = huge_page_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, mode)
    assert other is not None
    assert other["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert huge_page_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, mode) is None
    mode.write_text("always madvise [never]\n")  # turned off in the kernel: nothing to gain
    assert huge_page_env({}, mode) is None
    assert huge_page_env({}, tmp_path / "no-such-file") is None


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in raw if e)


def test_the_gateway_process_serves_with_the_tunable_unless_turned_off(tiny_export) -> None:
    if huge_page_env({}) is None:
        pytest.fail(f"{THP_MODE} says [never] or is missing: this test needs THP in madvise mode")
    with running_gateway(tiny_export["bundle"]) as gw:  # ready: it answered /readyz
        env = _environ(gw.process.pid)  # the pid it was started as, restarted in place
        assert "glibc.malloc.hugetlb=1" in env.get("GLIBC_TUNABLES", "")
    with running_gateway(tiny_export["bundle"], env={"SIDSERVE_HUGE_PAGES": "false"}) as gw:
        assert "glibc.malloc.hugetlb" not in _environ(gw.process.pid).get("GLIBC_TUNABLES", "")


def test_a_failed_restart_serves_on_without_huge_pages(monkeypatch, caplog) -> None:
    calls = []

    def refuse(path, argv, env):
        calls.append((path, argv, env["GLIBC_TUNABLES"]))
        raise PermissionError("exec refused")

    monkeypatch.setattr(huge_pages, "huge_page_env", lambda environ: {"GLIBC_TUNABLES": "x=1"})
    monkeypatch.setattr(huge_pages.os, "execve", refuse)
    huge_pages.restart_with_huge_pages({})  # returns instead of raising
    assert calls == [(sys.executable, sys.orig_argv, "x=1")]
    assert "serving without them" in caplog.text
