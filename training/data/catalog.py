"""The product catalog: ids and texts, in file order, with problems counted and reported."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from training.data.csvio import DataError, read_csv

log = logging.getLogger(__name__)


@dataclass
class Catalog:
    """Products in file order. `texts` is what models read: the title, else the description."""

    ids: list[str]
    texts: list[str]
    categories: list[str | None] | None = None
    source: str = ""
    report: dict[str, int | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {item_id: i for i, item_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def checksum(self) -> str:
        """Content hash of ids and texts: keys caches of anything computed from the catalog."""
        h = hashlib.sha256()
        for item_id, text in zip(self.ids, self.texts, strict=True):
            h.update(item_id.encode())
            h.update(b"\x1f")
            h.update(text.encode())
            h.update(b"\x1e")
        return h.hexdigest()


def load_catalog(
    path: str | Path,
    id_column: str = "product_uid",
    title_column: str = "title",
    description_column: str | None = "description",
    category_column: str | None = None,
) -> Catalog:
    """Load a catalog CSV; rows with no text or a repeated id are dropped, counted and logged."""
    table = read_csv(path, required=[id_column, title_column])
    if category_column and category_column not in table.header:
        raise DataError(f"{table.path}: no category column {category_column!r}")
    c_id, c_title = table.column(id_column), table.column(title_column)
    c_desc = table.column(description_column) if description_column in table.header else None
    c_cat = table.column(category_column) if category_column else None

    ids: list[str] = []
    texts: list[str] = []
    cats: list[str | None] = []
    seen: set[str] = set()
    empty_id = empty_text = duplicate = from_description = 0
    for row in table.rows:
        item_id = row[c_id].strip()
        if not item_id:
            empty_id += 1
            continue
        if item_id in seen:
            duplicate += 1
            continue
        text = " ".join(row[c_title].split())
        if not text and c_desc is not None:
            text = " ".join(row[c_desc].split())
            from_description += bool(text)
        if not text:
            empty_text += 1
            continue
        seen.add(item_id)
        ids.append(item_id)
        texts.append(text)
        if c_cat is not None:
            cats.append(row[c_cat].strip() or None)
    if not ids:
        raise DataError(f"{table.path}: no usable products (every row lacks an id or a text)")
    report: dict[str, int | str] = {
        "rows": len(table.rows),
        "items": len(ids),
        "dropped_empty_id": empty_id,
        "dropped_empty_text": empty_text,
        "dropped_duplicate_id": duplicate,
        "title_from_description": from_description,
        "encoding": table.encoding,
    }
    dropped = empty_id + empty_text + duplicate
    if dropped:
        log.warning(
            "%s: dropped %d of %d rows (%d without id, %d without text, %d repeated ids)",
            table.path,
            dropped,
            len(table.rows),
            empty_id,
            empty_text,
            duplicate,
        )
    return Catalog(
        ids=ids,
        texts=texts,
        categories=cats if c_cat is not None else None,
        source=str(table.path),
        report=report,
    )
