"""The machine line every benchmark report carries (benchmarks/report.py)."""

from __future__ import annotations

from benchmarks.report import machine

BLOCK = """processor\t: {n}
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
flags\t\t: fpu sse2 {flags}
"""


def test_the_cpu_generation_and_vector_width_are_named(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        BLOCK.format(n=0, family=23, model=49, flags="avx avx2")
        + "\n"
        + BLOCK.format(n=1, family=26, model=2, flags="avx2 avx512f")
    )
    line = machine(cpuinfo=info)
    # the first processor's block only, not a mix of both
    assert line.startswith("AMD EPYC (family 23 model 49, AVX2), ")
    assert line.endswith(", no GPU")
    info.write_text(BLOCK.format(n=0, family=26, model=2, flags="avx2 avx512f"))
    assert machine("NVIDIA H200", cpuinfo=info).startswith("AMD EPYC (family 26 model 2, AVX-512)")
    assert machine("NVIDIA H200", cpuinfo=info).endswith(", NVIDIA H200")


def test_no_cpuinfo_says_unknown(tmp_path):
    assert machine(cpuinfo=tmp_path / "missing").startswith("unknown CPU, ")
