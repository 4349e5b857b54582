"""The SID string form, shared by training, export and the gateway."""

from __future__ import annotations

from collections.abc import Sequence


def format_sid(codes: Sequence[int]) -> str:
    """The stable string form: codes joined by '-', e.g. '12-5-201'. Integers of any kind
    (Python or numpy); it runs once per candidate on the query path, so no per-code int()."""
    return "-".join(map(str, codes))


def parse_sid(text: str) -> list[int]:
    """Inverse of format_sid; ValueError on anything else."""
    try:
        codes = [int(c) for c in text.split("-")]
    except ValueError:
        raise ValueError(f"not a SID: {text!r}") from None
    if any(c < 0 for c in codes):
        raise ValueError(f"not a SID: {text!r}")
    return codes
