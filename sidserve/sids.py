"""The SID string form, shared by training, export and the gateway."""

from __future__ import annotations

from collections.abc import Sequence

# the text of every code below 4096 (codebooks and most disambiguation codes), made once:
# format_sid runs for every returned candidate, and a lookup is 2x faster than str()
_CODE_TEXT = tuple(str(c) for c in range(4096))


def format_sid(codes: Sequence[int]) -> str:
    """The stable string form: codes joined by '-', e.g. '12-5-201'. Integers of any kind
    (Python or numpy); it runs once per candidate on the query path, so no per-code int()."""
    n = len(_CODE_TEXT)
    return "-".join([_CODE_TEXT[c] if 0 <= c < n else str(c) for c in codes])


def parse_sid(text: str) -> list[int]:
    """Inverse of format_sid; ValueError on anything else."""
    try:
        codes = [int(c) for c in text.split("-")]
    except ValueError:
        raise ValueError(f"not a SID: {text!r}") from None
    if any(c < 0 for c in codes):
        raise ValueError(f"not a SID: {text!r}")
    return codes
