"""The last step of `make demo`: start the gateway on a bundle (embedded defaults: in-process
ONNX Runtime and store), wait until it is ready, send one sample query, print the answer with
the candidates' titles, stop the gateway."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import httpx

from service.launcher import running_gateway

HERE = Path(__file__).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--query", default="cordless drill 20v")
    parser.add_argument("--catalog", type=Path, default=HERE / "catalog.csv")
    args = parser.parse_args()
    titles = {}
    with args.catalog.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            titles[row["product_uid"]] = row["title"]

    with running_gateway(args.bundle, quiet=False) as gateway:
        url = gateway.url
        body = {"query": args.query, "beam_width": 10, "top_k": 3, "candidates": 5}
        print(f"\n$ curl -s {url}/v1/query/sids -d '{json.dumps(body)}'")
        answer = httpx.post(f"{url}/v1/query/sids", json=body, timeout=30)
        answer.raise_for_status()
        data = answer.json()
        print(json.dumps(data, indent=2))
        print(f"\nquery {args.query!r} (model {data['model_version']}):")
        for s in data["results"][0]["sids"]:
            print(f"  SID {s['sid']:>10}  log p {s['log_prob']:7.3f}")
        for c in data["results"][0]["candidates"]:
            sim = "  –  " if c["similarity"] is None else f"{c['similarity']:5.2f}"
            title = titles.get(c["item_id"], "?")
            print(f"  {c['sid']:>12}  depth {c['max_depth']}  cos {sim}  {title}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except RuntimeError as exc:  # the gateway did not start: its own error is printed above
        raise SystemExit(f"demo: {exc}") from None
