"""Category paths ('Hobbies > Model Trains > ...') turned into one label per level."""

from __future__ import annotations

from collections.abc import Sequence

SEPARATOR = " > "


def category_levels(
    paths: Sequence[str | None], depth: int = 4, separator: str = SEPARATOR
) -> list[list[str | None]]:
    """labels[d][n]: item n's category path cut to level d+1, or None when it is not that deep.

    A level's label is the whole path prefix, so two level-2 categories with the same name under
    different parents stay distinct.
    """
    levels: list[list[str | None]] = [[] for _ in range(depth)]
    for path in paths:
        parts = [p.strip() for p in path.split(separator)] if path else []
        parts = [p for p in parts if p]
        for d in range(depth):
            levels[d].append(separator.join(parts[: d + 1]) if len(parts) > d else None)
    return levels
