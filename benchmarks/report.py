"""Shared bits of the benchmark scripts: the machine line and Markdown tables."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path


def machine(gpu: str | None = None, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """CPU model (with its family / model numbers and widest vector unit), cores and OS, then
    `gpu` (what ran the work) or "no GPU".

    Cloud CPUs often report only "AMD EPYC": the family and model numbers tell the
    generations apart (AMD family 23 is Zen 2, 25 Zen 3/4, 26 Zen 5), and they run the same
    benchmark at very different speeds, so every report carries them.
    """
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if fields:  # the first processor's block is enough
                    break
                continue
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        flags = set(fields.get("flags", "").split())
        simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        model += f" (family {fields['cpu family']} model {fields['model']}, {simd})"
    system = f"{platform.system()} {platform.machine()}"
    return f"{model}, {os.cpu_count()} cores, {system}, {gpu or 'no GPU'}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def write_report(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {path}")
