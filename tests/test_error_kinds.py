"""Every `kind` an error reply can carry is one the metrics export from the start (an alert on
its first occurrence needs the series at 0) and one the docs list: a kind added to
service/errors.py alone fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from service.metrics import ERROR_KINDS

ROOT = Path(__file__).resolve().parents[1]


def replied_kinds() -> set[str]:
    """The kinds service/errors.py can reply with: the literal second argument of each
    `reply(...)`, and the values of the dicts that map a status or an exception to a kind."""
    tree = ast.parse((ROOT / "service" / "errors.py").read_text())
    kinds: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "reply":
            arg = node.args[1]
            if isinstance(arg, ast.Constant):
                kinds.add(arg.value)
            else:  # a name bound from one of the dicts below, or a fallback in .get()
                assert isinstance(arg, ast.Name), ast.dump(arg)
        # a status or exception class -> kind map (a JSON body's dict has string keys)
        if isinstance(node, ast.Dict) and not any(
            isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys
        ):
            kinds |= {v.value for v in node.values if isinstance(v, ast.Constant)}
        # HTTP_KINDS.get(status, fallback)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "HTTP_KINDS.get":
            kinds |= {a.value for a in node.args[1:] if isinstance(a, ast.Constant)}
    return {k for k in kinds if isinstance(k, str)}


def test_every_replied_kind_is_exported_and_documented():
    kinds = replied_kinds()
    # the parse finds the handlers' kinds (a parse that found none would pass vacuously)
    assert {"invalid_request", "store_unavailable", "internal", "http_error"} <= kinds
    assert kinds == set(ERROR_KINDS), "service/metrics.py ERROR_KINDS and errors.py differ"
    docs = (ROOT / "docs" / "gateway.md").read_text()
    (row,) = [line for line in docs.splitlines() if line.startswith("| `sidserve_errors_total`")]
    assert set(re.findall(r"`([a-z_]+)`", row)) - {"sidserve_errors_total", "kind"} == kinds
