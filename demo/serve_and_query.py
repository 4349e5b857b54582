"""The last step of `make demo`: start the gateway on a bundle (embedded defaults: in-process
ONNX Runtime and store), wait until it is ready, send one sample query, print the answer with
the candidates' titles, stop the gateway."""

from __future__ import annotations

import argparse
import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the gateway was not ready after {timeout:.0f} s")


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

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "sidserve.cli", "serve", "--bundle", str(args.bundle)]
    proc = subprocess.Popen([*cmd, "--port", str(port)])
    try:
        wait_ready(url, proc)
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
            print(f"  {c['sid']:>12}  depth {c['max_depth']}  {titles.get(c['item_id'], '?')}")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
