"""Reading CSV files, gzip or plain, with clear errors for the problems real exports have."""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
csv.field_size_limit(2**31 - 1)  # product descriptions can be long


class DataError(ValueError):
    """An input file cannot be used as it is; the message names the file and the problem."""


@dataclass(frozen=True)
class CsvTable:
    path: Path
    header: list[str]
    rows: list[list[str]]
    encoding: str

    def column(self, name: str) -> int:
        return self.header.index(name)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:  # by content, not by extension
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: truncated or corrupt gzip ({exc})") from exc
    return raw


def _decode(path: Path, raw: bytes) -> tuple[str, str]:
    """UTF-8 first (the shared copies are UTF-8); Latin-1 exports are decoded as cp1252/latin-1."""
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        log.warning("%s: not valid UTF-8 (%s); decoding as Windows-1252/Latin-1", path, exc.reason)
    try:
        return raw.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def read_csv(path: str | Path, required: Sequence[str]) -> CsvTable:
    """Read a whole CSV with a header row; fail naming the file if required columns are absent."""
    path = Path(path)
    text, encoding = _decode(path, _read_bytes(path))
    if "\x00" in text:
        raise DataError(f"{path}: contains NUL bytes; is this a binary file rather than a CSV?")
    reader: Iterator[list[str]] = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty file, expected a header row") from None
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable header: {exc}") from exc
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
            f"the header has {', '.join(map(repr, header))}"
        )
    rows: list[list[str]] = []
    width = len(header)
    try:
        for row in reader:
            if not row:
                continue
            if len(row) < width:
                row = row + [""] * (width - len(row))
            rows.append(row)
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from exc  # type: ignore[attr-defined]
    return CsvTable(path=path, header=header, rows=rows, encoding=encoding)
