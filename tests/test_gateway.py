"""The gateway end to end on the tiny exported bundle: routes, validation, batching, stores
(in-process and a real Redis), metrics and 503s for unavailable dependencies."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service import protocol as p
from service.app import create_app
from service.bundle import load_bundle, model_version_of
from service.launcher import free_port
from service.onnx_model import OnnxIndexer
from service.query_beams import search_beams
from service.serving import SidService
from service.settings import Settings
from service.tokenizer import BundleTokenizer
from service.trie import CompactTrie
from sidserve.prefix import matched_depth, prefix_score
from sidserve.sids import format_sid

QUERIES = ["cordless drill", "kitchen faucet", "led light bulb", "paint roller cover"]


@pytest.fixture
def bundle_dir(tiny_export) -> Path:
    return tiny_export["bundle"]


@pytest.fixture
def client(bundle_dir):
    settings = Settings(bundle=bundle_dir, max_queries=8, max_text_chars=200, max_beam_width=32)
    with TestClient(create_app(settings)) as c:
        yield c


def offline_beams(bundle_dir: Path, texts: list[str], beam: int):
    b = load_bundle(bundle_dir)
    model = OnnxIndexer(b.graph_paths)
    tok = BundleTokenizer(b.file("tokenizer.json"), b.tokenizer)
    trie = CompactTrie.from_codes(b.semantic_sids, b.codebook_sizes)
    return search_beams(model, tok, texts, trie, beam)


def test_query_sids_matches_offline_search_and_ranks_candidates(client, bundle_dir):
    body = {"query": QUERIES[0], "beam_width": 5, "top_k": 3, "order": "beam"}
    r = client.post("/v1/query/sids", json=body)
    assert r.status_code == 200, r.text
    body = r.json()
    # the hand-built body is exactly the documented response model
    assert p.QuerySidsResponse.model_validate(body).model_dump(mode="json") == body
    bundle = load_bundle(bundle_dir)
    assert body["model_version"] == bundle.model_version
    (res,) = body["results"]
    ((paths, logp),) = offline_beams(bundle_dir, [QUERIES[0]], 5)
    assert [s["codes"] for s in res["sids"]] == paths[:3].tolist()
    assert [s["rank"] for s in res["sids"]] == list(range(len(res["sids"])))
    np.testing.assert_allclose([s["log_prob"] for s in res["sids"]], logp[:3])
    assert all(s["sid"] == format_sid(s["codes"]) for s in res["sids"])
    # every candidate: features recomputed by hand, order (max depth desc, best rank asc)
    known = dict(zip(bundle.item_ids, bundle.item_sids.tolist(), strict=True))
    q = paths[:3]
    keys = []
    for c in res["candidates"]:
        sid = known[c["item_id"]]
        assert c["sid"] == format_sid(sid)
        depth = matched_depth(q, np.array([sid[: bundle.levels]]))[0]
        assert c["matched_depth"] == depth.tolist()
        assert c["max_depth"] == depth.max() >= 1
        assert c["prefix_score"] == pytest.approx(float(prefix_score(depth.max(), bundle.levels)))
        assert c["best_rank"] == int(depth.argmax())
        assert c["best_log_prob"] == pytest.approx(float(logp[depth.argmax()]))
        keys.append((-c["max_depth"], c["best_rank"]))
    assert keys == sorted(keys)
    assert 0 < len(res["candidates"]) <= 100


def torch_vectors(tiny_export, texts: list[str], max_tokens: str) -> np.ndarray:
    """The checkpoint's own dense representation of `texts`, in PyTorch (not the gateway's
    numpy pooling of ONNX states)."""
    from training.indexer.checkpoint import load_checkpoint
    from training.indexer.inference import dense_representations
    from training.indexer.states import compute_states

    model, tok, _, _ = load_checkpoint(tiny_export["checkpoint"])
    limit = getattr(model.cfg, max_tokens)
    return dense_representations(model, compute_states(model, tok, texts, limit, progress=False))


@pytest.mark.parametrize("order", ["similarity", "depth"])
def test_candidates_ordered_by_similarity(client, bundle_dir, tiny_export, order):
    bundle = load_bundle(bundle_dir)
    query = {"queries": QUERIES, "beam_width": 5, "top_k": 3}
    if order == "similarity":
        by_sim = client.post("/v1/query/sids", json=query).json()  # the default with vectors
    else:
        by_sim = client.post("/v1/query/sids", json={**query, "order": order}).json()
    by_beam = client.post("/v1/query/sids", json={**query, "order": "beam"}).json()
    row = {item_id: n for n, item_id in enumerate(bundle.item_ids)}
    items = torch_vectors(tiny_export, load_catalog_texts(tiny_export), "max_item_tokens")
    queries = torch_vectors(tiny_export, QUERIES, "max_query_tokens")
    reordered = 0
    for q, sim_res, beam_res in zip(queries, by_sim["results"], by_beam["results"], strict=True):
        cands = sim_res["candidates"]
        # the same candidates (all 48 items fit in 100), only their order differs
        assert sorted(c["item_id"] for c in cands) == sorted(
            c["item_id"] for c in beam_res["candidates"]
        )
        want = [float(items[row[c["item_id"]]] @ q) for c in cands]
        np.testing.assert_allclose([c["similarity"] for c in cands], want, atol=2e-3)
        keys = [(-c["max_depth"], -c["similarity"]) for c in cands]
        if order == "similarity":
            keys = [-c["similarity"] for c in cands]
        assert keys == sorted(keys)
        reordered += [c["item_id"] for c in cands] != [c["item_id"] for c in beam_res["candidates"]]
    assert reordered  # the orders do differ somewhere, so the check above has teeth


def test_candidate_orders_on_a_pool_of_several_depths():
    # beams 1-2-3 and 1-5-0; items at depth 3, 2 (under beam 1's 1-5), 1, and one without a
    # vector; similarity alone puts the depth-1 item first, `depth` keeps depths apart
    paths = np.array([[1, 2, 3], [1, 5, 0]])
    logp = np.array([-0.1, -0.2])
    ids = ["d3", "d2", "d1", "none", "d3b"]
    sids = np.array([[1, 2, 3, 0], [1, 5, 1, 0], [1, 7, 7, 0], [1, 2, 3, 1], [1, 2, 3, 2]])
    similarity = np.array([0.2, 0.5, 0.9, np.nan, 0.2])

    def ranked(order: str, limit: int = 10) -> list[str]:
        rows = SidService._candidates(paths, logp, ids, sids, None, similarity, order, limit)
        assert [c["sid"] for c in rows] == [format_sid(sids[ids.index(c["item_id"])]) for c in rows]
        # where the store has the SID strings, each row carries its item's, not a new one
        texts = [f"text-of-{i}" for i in ids]
        given = SidService._candidates(paths, logp, ids, sids, texts, similarity, order, limit)
        assert [c["sid"] for c in given] == [f"text-of-{c['item_id']}" for c in rows]
        assert [{**c, "sid": None} for c in given] == [{**c, "sid": None} for c in rows]
        return [c["item_id"] for c in rows]

    # ties (d3, d3b) keep the store's beam order
    assert ranked("similarity") == ["d1", "d2", "d3", "d3b", "none"]
    assert ranked("depth") == ["d3", "d3b", "none", "d2", "d1"]
    assert ranked("beam") == ids
    assert ranked("similarity", limit=2) == ["d1", "d2"]


def load_catalog_texts(tiny_export) -> list[str]:
    from training.data import load_catalog

    return load_catalog(tiny_export["catalog"]).texts


def test_bundle_without_vectors_falls_back_to_beam_order(bundle_dir, tmp_path):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    (old / "items.vectors.npy").unlink()
    m = json.loads((old / "manifest.json").read_text())
    del m["items"]["vectors"], m["files"]["items.vectors.npy"]
    m["model_version"] = model_version_of(m["files"])  # as its exporter wrote it
    (old / "manifest.json").write_text(json.dumps(m))
    with TestClient(create_app(Settings(bundle=old))) as c:
        r = c.post("/v1/query/sids", json={"query": QUERIES[0]})
        assert r.status_code == 200, r.text
        cands = r.json()["results"][0]["candidates"]
        assert cands and all(x["similarity"] is None for x in cands)
        keys = [(-x["max_depth"], x["best_rank"]) for x in cands]
        assert keys == sorted(keys)
        for order in ("similarity", "depth"):
            r = c.post("/v1/query/sids", json={"query": QUERIES[0], "order": order})
            assert r.status_code == 422 and "order" in r.json()["message"], r.text


def test_batch_equals_singles_and_sids_only(client):
    batch = client.post("/v1/query/sids", json={"queries": QUERIES, "candidates": 0}).json()
    for text, res in zip(QUERIES, batch["results"], strict=True):
        single = client.post("/v1/query/sids", json={"query": text, "candidates": 0}).json()
        assert res == single["results"][0]
        assert res["candidates"] == []


@pytest.mark.parametrize("window", [0, 32])
def test_concurrent_requests_are_batched_and_exact(bundle_dir, window):
    settings = Settings(
        bundle=bundle_dir, batch_max_wait_ms=20.0, batch_max_queries=4, batch_length_window=window
    )
    app = create_app(settings)
    svc: SidService = app.state.service

    async def main():
        await svc.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                texts = QUERIES * 4
                rs = await asyncio.gather(
                    *(c.post("/v1/query/sids", json={"query": t, "candidates": 5}) for t in texts)
                )
                return texts, [r.json() for r in rs]
        finally:
            await svc.close()

    texts, bodies = asyncio.run(main())
    want = offline_beams(bundle_dir, texts, 10)
    for (paths, _), body in zip(want, bodies, strict=True):
        assert [s["codes"] for s in body["results"][0]["sids"]] == paths.tolist()
    sizes = svc.metrics.registry.get_sample_value("sidserve_batch_size_sum")
    count = svc.metrics.registry.get_sample_value("sidserve_batch_size_count")
    assert sizes == len(texts) and count < len(texts)  # some requests shared a batch


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"queries": []}, "queries"),
        ({"queries": ["ok", " "]}, "queries"),
        ({"queries": ["q"] * 9}, "queries"),
        ({"query": "x" * 201}, "query"),
        ({"query": "drill", "beam_width": 0}, "beam_width"),
        ({"query": "drill", "beam_width": 33}, "beam_width"),
        ({"query": "drill", "beam_width": 4, "top_k": 5}, "top_k"),
        ({"query": "drill", "candidates": -1}, "candidates"),
        ({"query": "drill", "candidates": 1001}, "candidates: 1001 > the maximum 1000"),
        ({"query": "drill", "min_depth": 3}, "min_depth"),
        ({"query": "drill", "beams": 4}, "beams"),
        ({"query": "drill", "order": "random"}, "order"),
        ({"query": "drill", "beam_width": True}, "beam_width"),
        ({"query": "drill", "candidates": "10"}, "candidates"),
        ({"queries": ["ok", "\u200b\x00"]}, "queries[1]"),  # nothing the tokenizer keeps
        ({"query": "\x01\u200b"}, "query: has no character"),
        ({"query": "a", "queries": ["b"]}, "query"),
        ({}, "query"),
    ],
)
def test_bad_query_input_is_422_naming_the_field(client, body, field):
    r = client.post("/v1/query/sids", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"
    assert field in r.json()["message"]


def test_not_json_is_422_naming_the_body_and_where_it_broke(client):
    r = client.post(
        "/v1/query/sids", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_request"
    assert body["details"] == [
        {"field": "body", "message": "not valid JSON at character 10 (Expecting value)"}
    ]
    assert body["message"] == "body: not valid JSON at character 10 (Expecting value)"


def test_a_body_without_a_json_content_type_says_so(client):
    r = client.post("/v1/query/sids", content=b'{"query": "drill"}')  # no content-type
    assert r.status_code == 422
    assert r.json()["message"] == (
        "body: send a JSON object with content-type: application/json (got missing)"
    )
    r = client.post(
        "/v1/query/sids",
        content=b"query=drill",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert "(got application/x-www-form-urlencoded)" in r.json()["message"]


@pytest.mark.parametrize(
    "headers, says",
    [
        ({"content-encoding": "gzip"}, "content-encoding gzip is not supported"),
        ({}, "could not be read as JSON text (UTF-8 expected)"),
    ],
)
def test_a_body_that_is_not_text_is_400_in_the_error_shape(client, headers, says):
    import gzip

    body = gzip.compress(b'{"query": "drill"}')
    r = client.post(
        "/v1/query/sids", content=body, headers={"content-type": "application/json", **headers}
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"
    assert r.json()["details"][0]["field"] == "body"
    assert says in r.json()["message"]


def test_unknown_path_and_wrong_method_use_the_error_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "message": "GET /v1/nothing: Not Found"}
    r = client.get("/v1/query/sids")
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed"
    assert r.headers["allow"] == "POST"  # the header the protocol asks for stays


def test_encode_matches_table_and_upsert_makes_items_retrievable(client, bundle_dir, tiny_export):
    from training.data import load_catalog

    catalog = load_catalog(tiny_export["catalog"])
    bundle = load_bundle(bundle_dir)
    items = [{"item_id": catalog.ids[n], "text": catalog.texts[n]} for n in range(5)]
    r = client.post("/v1/items/encode", json={"items": items})
    assert r.status_code == 200, r.text
    got = [it["sid"] for it in r.json()["items"]]
    assert got == [format_sid(s) for s in bundle.item_sids[:5]]  # same text, same SID
    assert not any(it["stored"] for it in r.json()["items"])

    new = {"item_id": "new-1", "text": "Ridgeway Cordless Drill for Power Tools, 20V"}
    r = client.post("/v1/items/encode", json={"items": [new], "upsert": True})
    sid = r.json()["items"][0]["sid"]
    assert r.json()["items"][0]["stored"]
    rel = client.post("/v1/relevance", json={"query": "drill", "item_ids": ["new-1"]}).json()
    assert rel["items"][0]["found"] and rel["items"][0]["sid"] == sid
    body = {"query": new["text"], "candidates": 1000, "min_depth": 0}
    found = client.post("/v1/query/sids", json=body).json()
    assert "new-1" in [c["item_id"] for c in found["results"][0]["candidates"]]

    # the same id with other text moves: the old SID is gone from the store
    moved = {"item_id": "new-1", "text": "Corvex Pendant Lamp for Lighting"}
    r2 = client.post("/v1/items/encode", json={"items": [moved], "upsert": True}).json()
    rel = client.post("/v1/relevance", json={"query": "lamp", "item_ids": ["new-1"]}).json()
    assert rel["items"][0]["sid"] == r2["items"][0]["sid"]
    # upserted items carry the dense vector of the text they were upserted with
    lamp = torch_vectors(tiny_export, ["lamp"], "max_query_tokens")[0]
    texts = [moved["text"], catalog.texts[0]]
    vectors = torch_vectors(tiny_export, texts, "max_item_tokens")
    assert rel["items"][0]["similarity"] == pytest.approx(float(vectors[0] @ lamp), abs=2e-3)
    found = client.post("/v1/query/sids", json={"query": "lamp", "min_depth": 0}).json()
    (cand,) = [c for c in found["results"][0]["candidates"] if c["item_id"] == "new-1"]
    assert cand["similarity"] == pytest.approx(rel["items"][0]["similarity"], abs=1e-6)

    # a catalog item re-encoded with another text keeps its SID when its path stays (every
    # text of the tiny random model gets the same path), but no longer the bundle's vector
    first = catalog.ids[0]
    before = client.post("/v1/relevance", json={"query": "lamp", "item_ids": [first]}).json()
    again = {"item_id": first, "text": moved["text"]}
    r3 = client.post("/v1/items/encode", json={"items": [again], "upsert": True}).json()
    assert r3["items"][0]["sid"] == format_sid(bundle.item_sids[0])
    after = client.post("/v1/relevance", json={"query": "lamp", "item_ids": [first]}).json()
    was, now = before["items"][0]["similarity"], after["items"][0]["similarity"]
    assert was == pytest.approx(float(vectors[1] @ lamp), abs=2e-3)
    assert now == pytest.approx(float(vectors[0] @ lamp), abs=2e-3) and now != was

    # a catalog item whose stored SID is no longer the bundle's (moved by a changed text,
    # through a writer that stored no vector) has no vector; the others keep the bundle's
    # unless the store has one from an upsert. The move is simulated on the store's answer.
    svc: SidService = client.app.state.service
    query = np.ones(bundle.hidden_size, dtype=np.float32) / np.sqrt(bundle.hidden_size)
    stored = bundle.item_sids[1:3].copy()
    sims = svc._similarity(query, stored, {})
    np.testing.assert_allclose(sims, bundle.item_vectors[1:3] @ query, rtol=1e-6)
    stored[0, -1] += 100  # another disambiguation code: the store's SID is not the bundle's
    moved_sims = svc._similarity(query, stored, {})
    assert np.isnan(moved_sims[0]) and moved_sims[1] == pytest.approx(sims[1], rel=1e-6)
    upserted = svc._similarity(query, stored, {0: query, 1: -query})
    np.testing.assert_allclose(upserted, [1.0, -1.0], rtol=1e-6)


def test_deleted_items_are_no_longer_candidates_and_can_come_back(bundle_dir):
    """`/v1/items/delete` on the in-process store (the Redis one: tests/test_stores.py and
    tests/test_item_journal.py): gone from queries and /v1/relevance, reported per id."""
    bundle = load_bundle(bundle_dir)
    first = bundle.item_ids[0]
    query = {"query": "drill", "candidates": 1000, "min_depth": 0, "order": "beam"}
    with TestClient(create_app(Settings(bundle=bundle_dir, max_delete_items=3))) as c:

        def candidates() -> list[str]:
            r = c.post("/v1/query/sids", json=query)
            return [x["item_id"] for x in r.json()["results"][0]["candidates"]]

        before = candidates()
        assert first in before
        new = {"item_id": "new-1", "text": "Cordless Drill 20V"}
        c.post("/v1/items/encode", json={"items": [new], "upsert": True})
        r = c.post("/v1/items/delete", json={"item_ids": ["new-1", first, "never"]})
        assert r.status_code == 200, r.text
        assert p.DeleteResponse.model_validate(r.json()).model_dump(mode="json") == r.json()
        assert r.json() == {
            "model_version": bundle.model_version,
            "deleted": ["new-1", first],
            "unknown": ["never"],
        }
        assert candidates() == [i for i in before if i != first]
        rel = c.post("/v1/relevance", json={"query": "drill", "item_ids": [first, "new-1"]})
        assert rel.json()["unknown"] == [first, "new-1"]
        again = c.post("/v1/items/delete", json={"item_ids": [first]}).json()
        assert again["deleted"] == [] and again["unknown"] == [first]
        back = {"items": [{**new, "item_id": first}], "upsert": True}
        sid = c.post("/v1/items/encode", json=back).json()["items"][0]["sid"]
        assert sid.rsplit("-", 1)[0] == format_sid(bundle.item_sids[0][:-1])  # its path,
        assert sid != format_sid(bundle.item_sids[0])  # but a new code
        assert first in candidates()
        for body, field in [
            ({"item_ids": []}, "item_ids"),
            ({"item_ids": ["a", "a"]}, "distinct"),
            ({"item_ids": ["a|b"]}, "item_ids.0"),
            ({"item_ids": ["a", "b", "c", "d"]}, "at most 3"),
            ({"item_ids": "a"}, "item_ids"),
            ({"ids": ["a"]}, "ids"),
        ]:
            r = c.post("/v1/items/delete", json=body)
            assert r.status_code == 422, (body, r.text)
            assert field in r.json()["message"], (body, r.text)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [{"item_id": "a", "text": " "}]}, "text"),
        ({"items": [{"item_id": "", "text": "x"}]}, "item_id"),
        ({"items": [{"item_id": "a", "text": "x"}, {"item_id": "a", "text": "y"}]}, "distinct"),
        ({"items": [{"item_id": "a", "text": "x", "price": 3}]}, "price"),
        ({"items": [{"item_id": "a", "text": "x"}], "upsert": "yes"}, "upsert"),
        (
            {"items": [{"item_id": "a", "text": "x"}, {"item_id": "b", "text": "\u200b"}]},
            "items[1]",
        ),
    ],
)
def test_bad_encode_input_is_422(client, body, field):
    r = client.post("/v1/items/encode", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/v1/query/sids", '{"query": "drill \\udc00 bit"}', "query"),
        ("/v1/query/sids", '{"queries": ["drill", "\\ud83d"]}', "queries.1"),
        ("/v1/items/encode", '{"items": [{"item_id": "a", "text": "\\ud800"}]}', "items.0.text"),
        ("/v1/relevance", '{"query": "drill", "item_ids": ["a", "\\ud800"]}', "item_ids.1"),
        ("/v1/relevance", '{"query": "\\ud800", "item_ids": ["a"]}', "query"),
    ],
)
def test_half_a_surrogate_pair_is_422_naming_the_field(client, path, raw, field):
    # valid JSON, but no UTF-8 text: the tokenizer raised a TypeError (a 500) before
    r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith(f"{field}: ")
    assert "unpaired UTF-16 surrogate" in r.json()["message"]


def test_a_whole_surrogate_pair_is_text(client):
    raw = '{"query": "\\ud83d\\ude00 cordless drill", "candidates": 0}'
    r = client.post("/v1/query/sids", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["query"] == "\U0001f600 cordless drill"


def test_a_body_over_max_body_bytes_is_413_before_it_is_read(bundle_dir):
    app = create_app(Settings(bundle=bundle_dir, max_body_bytes=300))
    small = {"query": "cordless drill", "candidates": 0}
    big = {"queries": ["cordless drill"] * 40}
    assert len(json.dumps(big)) > 300 > len(json.dumps(small))
    with TestClient(app) as c:
        assert c.post("/v1/query/sids", json=small).status_code == 200
        declared = c.post("/v1/query/sids", json=big)  # Content-Length over the limit
        assert declared.status_code == 413, declared.text
        assert declared.json() == {
            "error": "payload_too_large",
            "message": "request body over 300 bytes (max_body_bytes)",
        }

        # no Content-Length: the bytes received count, and a few over the limit are too many
        over = json.dumps({"items": [{"item_id": "a", "text": "x" * 280}]}).encode()
        assert 300 < len(over) < 330

        def chunks():
            yield over[:200]
            yield over[200:]

        chunked = c.post("/v1/items/encode", content=chunks())
        assert chunked.status_code == 413, chunked.text
        assert chunked.json()["error"] == "payload_too_large"
        text = c.get("/metrics").text
    assert 'sidserve_requests_total{endpoint="/v1/query/sids",status="413"} 1.0' in text
    assert 'sidserve_errors_total{kind="payload_too_large"} 2.0' in text


def test_relevance_reports_unknown_ids_per_item(client, bundle_dir):
    bundle = load_bundle(bundle_dir)
    ids = [bundle.item_ids[0], "no-such-item", bundle.item_ids[7]]
    r = client.post("/v1/relevance", json={"query": "cordless drill", "item_ids": ids})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [it["found"] for it in body["items"]] == [True, False, True]
    assert body["unknown"] == ["no-such-item"]
    assert body["items"][0]["sid"] == format_sid(bundle.item_sids[0])
    assert len(body["items"][0]["matched_depth"]) == len(body["sids"])


def test_relevance_of_an_item_sharing_no_prefix_has_no_best_beam(bundle_dir):
    """No best beam, score 0. The tiny model puts every catalog item under one level-1 code,
    so the store gets one that is not, as an upsert with given codes would (own gateway: the
    shared one's store stays as the other tests expect)."""
    with TestClient(create_app(Settings(bundle=bundle_dir))) as c:
        one = {"query": "cordless drill", "beam_width": 1, "top_k": 1}
        probe = {**one, "item_ids": ["no-such-item"]}
        top = c.post("/v1/relevance", json=probe).json()["sids"][0]
        codes = np.array([(top["codes"][0] + 1) % 8, 0])
        c.portal.call(c.app.state.service.store.upsert, [("far-away", codes)])
        item = c.post("/v1/relevance", json={**one, "item_ids": ["far-away"]}).json()["items"][0]
    assert item["found"] and item["max_depth"] == 0 and item["prefix_score"] == 0.0
    assert item["best_rank"] is None and item["best_log_prob"] is None


def test_an_unexpected_error_is_a_logged_500_in_the_error_shape_and_counted(bundle_dir, caplog):
    settings = Settings(bundle=bundle_dir)
    app = create_app(settings)

    async def broken(_req):
        raise RuntimeError("boom")

    app.state.service.query_sids = broken
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/query/sids", json={"query": "drill"}, headers={"x-request-id": "q-42"})
        assert r.status_code == 500
        assert r.json() == {"error": "internal", "message": "internal error (RuntimeError)"}
        assert r.headers.get_list("x-request-id") == ["q-42"]
        text = c.get("/metrics").text
    assert 'sidserve_requests_total{endpoint="/v1/query/sids",status="500"} 1.0' in text
    assert 'sidserve_errors_total{kind="internal"} 1.0' in text
    logged = [r for r in caplog.records if r.name == "service.errors"]
    assert logged and "POST /v1/query/sids (request q-42)" in logged[0].getMessage()
    assert logged[0].exc_info is not None  # with its traceback


@pytest.mark.parametrize(
    "sent, echoed",
    [(None, False), ("search-7f3a:retry.2", True), ("has spaces", False), ("x" * 129, False)],
)
def test_every_answer_carries_a_request_id(client, sent, echoed):
    headers = {} if sent is None else {"x-request-id": sent}
    answers = [
        client.post("/v1/query/sids", json={"query": "drill"}, headers=headers),
        client.post("/v1/query/sids", json={"query": ""}, headers=headers),  # 422
        client.get("/v1/nothing", headers=headers),  # 404
        client.get("/healthz", headers=headers),
    ]
    assert [a.status_code for a in answers] == [200, 422, 404, 200]
    ids = [a.headers.get_list("x-request-id") for a in answers]
    assert all(len(i) == 1 for i in ids), ids
    if echoed:
        assert {i[0] for i in ids} == {sent}
    else:  # a fresh id for each request where none, or none usable, was sent
        assert len({i[0] for i in ids}) == len(ids)
        assert all(re.fullmatch(r"[0-9a-f]{32}", i[0]) for i in ids), ids


def test_health_readiness_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["backend"] == "onnxruntime"
    for path in ("/healthz", "/readyz"):  # load balancers often check with HEAD
        head = client.head(path)
        assert head.status_code == 200 and head.content == b""
    client.post("/v1/query/sids", json={"query": "drill"})
    client.post("/v1/query/sids", json={"query": ""})
    text = client.get("/metrics").text
    for name in (
        'sidserve_request_seconds_count{endpoint="/v1/query/sids"} 2.0',
        'sidserve_requests_total{endpoint="/v1/query/sids",status="200"} 1.0',
        'sidserve_requests_total{endpoint="/v1/query/sids",status="422"} 1.0',
        'sidserve_stage_seconds_count{stage="encode"}',
        'sidserve_stage_seconds_count{stage="beam_search"}',
        'sidserve_stage_seconds_count{stage="store"}',
        "sidserve_batch_size_count",
        "sidserve_queue_depth",
        'sidserve_errors_total{kind="invalid_request"}',
        "sidserve_model_info{",
    ):
        assert name in text, name


def test_the_startup_heap_is_frozen_while_serving_and_released_after(bundle_dir):
    """Full collections under load walk only what requests allocate (docs/gateway.md)."""
    gc.unfreeze()
    with TestClient(create_app(Settings(bundle=bundle_dir))) as c:
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the libraries and the bundle: tens of thousands of objects
        assert c.post("/v1/query/sids", json={"query": "drill"}).status_code == 200
    assert gc.get_freeze_count() == 0


def test_openapi_documents_the_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/query/sids", "/v1/items/encode", "/v1/relevance"} <= set(paths)


# ---- Redis: the production store, and what happens when it goes away


def test_redis_store_serves_the_same_candidates(bundle_dir, redis_server):
    from sidserve.cli import main

    assert main(["load-items", "--bundle", str(bundle_dir), "--redis-url", redis_server]) == 0
    body = {"queries": QUERIES, "candidates": 20}
    upsert = {"items": [{"item_id": "new-1", "text": "Cordless Drill 20V"}], "upsert": True}
    relevance = {"query": QUERIES[0], "item_ids": ["new-1", "missing"]}
    with (
        TestClient(create_app(Settings(bundle=bundle_dir))) as mem,
        TestClient(create_app(Settings(bundle=bundle_dir, redis_url=redis_server))) as red,
    ):
        assert red.get("/readyz").json()["store"] == "RedisStore"
        first = red.post("/v1/query/sids", json=body).json()
        assert first == mem.post("/v1/query/sids", json=body).json()
        # an upserted item (with its vector) reads back the same from both stores
        for c in (mem, red):
            assert c.post("/v1/items/encode", json=upsert).status_code == 200
        got = red.post("/v1/relevance", json=relevance).json()
        assert got == mem.post("/v1/relevance", json=relevance).json()
        assert got["items"][0]["similarity"] is not None
        body = {**body, "candidates": 100}
        got = red.post("/v1/query/sids", json=body).json()
        assert got == mem.post("/v1/query/sids", json=body).json()
        assert "new-1" in [c["item_id"] for c in got["results"][0]["candidates"]]

        # the version's data gone (a Redis restarted without it, a reload under way): 503s
        # naming the fix, not answers with no candidates; the SIDs alone still come
        redis.Redis.from_url(redis_server).flushdb()
        for path, sent in [
            ("/v1/query/sids", body),
            ("/v1/items/encode", upsert),
            ("/v1/relevance", relevance),
        ]:
            r = red.post(path, json=sent)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", (path, r.text)
            assert r.json()["error"] == "store_unavailable"
            assert "load-items" in r.json()["message"]
        assert red.post("/v1/query/sids", json={**body, "candidates": 0}).status_code == 200
        assert main(["load-items", "--bundle", str(bundle_dir), "--redis-url", redis_server]) == 0
        r = red.post("/v1/query/sids", json={**body, "candidates": 20})
        assert r.status_code == 200 and r.json() == first  # the upsert went with the data


def test_paths_that_other_gateways_upserted_join_the_trie(bundle_dir, redis_server):
    """Gateway B learns, within `trie_refresh_s`, a semantic path new to the catalog that
    another gateway's upsert created, so its beams can reach that item."""
    import itertools

    from service.stores.redis_store import RedisStore
    from sidserve.cli import main

    assert main(["load-items", "--bundle", str(bundle_dir), "--redis-url", redis_server]) == 0
    bundle = load_bundle(bundle_dir)
    known = {tuple(p) for p in bundle.semantic_sids.tolist()}
    sizes = [range(k) for k in bundle.codebook_sizes]
    new = next(p for p in itertools.product(*sizes) if p not in known)
    settings = Settings(bundle=bundle_dir, redis_url=redis_server, trie_refresh_s=0.2)
    with TestClient(create_app(settings)) as b:
        trie = lambda: b.app.state.service.batcher.trie  # noqa: E731
        assert new not in trie()

        async def other_gateway_upserts() -> None:
            store = RedisStore(redis_server, bundle.model_version, bundle.levels)
            await store.upsert([("cold-start-1", np.array(new))])
            await store.close()

        asyncio.run(other_gateway_upserts())
        deadline = time.monotonic() + 5
        while new not in trie() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert new in trie()
        assert all(tuple(p) in trie() for p in known)  # no path lost its items
        got = b.post("/v1/relevance", json={"query": "drill", "item_ids": ["cold-start-1"]})
        assert got.json()["items"][0]["sid"] == format_sid([*new, 0])
    off = Settings(bundle=bundle_dir, redis_url=redis_server, trie_refresh_s=0)
    with TestClient(create_app(off)) as c:  # never refreshed: the bundle's paths only
        time.sleep(0.3)
        assert new not in c.app.state.service.batcher.trie


def test_an_upsert_onto_a_new_path_joins_the_gateways_trie_at_once(bundle_dir):
    """An item upserted through `/v1/items/encode` onto a path new to the catalog is
    reachable by this gateway's next query, with no refresh. (The tiny model gives every
    text the catalog's one path, so its codes are replaced by a chosen new path.)"""
    import itertools

    bundle = load_bundle(bundle_dir)
    known = {tuple(q) for q in bundle.semantic_sids.tolist()}
    sizes = [range(k) for k in bundle.codebook_sizes]
    new = next(q for q in itertools.product(*sizes) if q not in known)
    with TestClient(create_app(Settings(bundle=bundle_dir))) as c:
        service = c.app.state.service
        encode = service._item_codes

        async def onto_new_path(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            codes, vectors = await encode(texts)
            codes[:] = new
            return codes, vectors

        service._item_codes = onto_new_path
        assert new not in service.batcher.trie
        item = {"item_id": "cold-1", "text": "Ridgeway Cordless Drill"}
        r = c.post("/v1/items/encode", json={"items": [item], "upsert": True})
        assert r.json()["items"][0]["codes"] == list(new), r.text
        assert new in service.batcher.trie and all(q in service.batcher.trie for q in known)
        body = {"query": "drill", "beam_width": 32, "top_k": 32, "candidates": 1000}
        result = c.post("/v1/query/sids", json=body).json()["results"][0]
        assert list(new) in [sid["codes"] for sid in result["sids"]]
        assert "cold-1" in [cand["item_id"] for cand in result["candidates"]]


def test_a_path_whose_items_are_all_deleted_leaves_the_tries(bundle_dir, redis_server):
    """Deleting the last item of a semantic path takes the path out of the deleting gateway's
    trie at once (in-process store and Redis) and out of another Redis gateway's within
    `trie_refresh_s`, so no beam ends on it; the other paths stay. (The tiny bundle's items
    share one path, so the test's paths come from upserts with chosen codes.)"""
    import itertools

    from service.stores.redis_store import RedisStore
    from sidserve.cli import main

    bundle = load_bundle(bundle_dir)
    known = [tuple(q) for q in np.unique(bundle.semantic_sids, axis=0).tolist()]
    sizes = [range(k) for k in bundle.codebook_sizes]
    gone, kept = [q for q in itertools.product(*sizes) if q not in known][:2]
    query = {"queries": QUERIES, "beam_width": 32, "top_k": 32, "candidates": 0}

    def trie(c: TestClient):
        return c.app.state.service.batcher.trie

    def check(c: TestClient) -> None:
        assert gone not in trie(c) and all(q in trie(c) for q in [kept, *known])
        for result in c.post("/v1/query/sids", json=query).json()["results"]:
            assert all(tuple(sid["codes"]) != gone for sid in result["sids"])

    def delete(c: TestClient) -> None:
        r = c.post("/v1/items/delete", json={"item_ids": ["on-gone"]})
        assert r.json()["deleted"] == ["on-gone"], r.text
        check(c)

    items = [("on-gone", np.array(gone)), ("on-kept", np.array(kept))]
    with TestClient(create_app(Settings(bundle=bundle_dir))) as c:  # the in-process store
        service = c.app.state.service
        c.portal.call(service.store.upsert, items)  # as if upserted texts had these codes
        c.portal.call(service.follow_store_paths)
        assert gone in trie(c) and kept in trie(c)
        delete(c)

    assert main(["load-items", "--bundle", str(bundle_dir), "--redis-url", redis_server]) == 0

    async def other_gateway_upserts() -> None:
        store = RedisStore(redis_server, bundle.model_version, bundle.levels)
        await store.upsert(items)
        await store.close()

    asyncio.run(other_gateway_upserts())
    shared = Settings(bundle=bundle_dir, redis_url=redis_server, trie_refresh_s=0.2)
    alone = shared.model_copy(update={"trie_refresh_s": 0})  # follows its own writes only
    with TestClient(create_app(alone)) as a, TestClient(create_app(shared)) as b:
        a.portal.call(a.app.state.service.follow_store_paths)
        deadline = time.monotonic() + 5
        while gone not in trie(b) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone in trie(a) and gone in trie(b)
        delete(a)  # at once in the deleting gateway
        while gone in trie(b) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
        check(b)


def test_a_full_redis_makes_upserts_503_and_queries_go_on(
    bundle_dir, redis_server, redis_refusing_writes
):
    from sidserve.cli import main

    assert main(["load-items", "--bundle", str(bundle_dir), "--redis-url", redis_server]) == 0
    upsert = {"items": [{"item_id": "new-2", "text": "Cordless Drill 20V"}], "upsert": True}
    with TestClient(create_app(Settings(bundle=bundle_dir, redis_url=redis_server))) as c:
        redis_refusing_writes("oom")
        r = c.post("/v1/items/encode", json=upsert)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"] == "store_unavailable" and "maxmemory" in r.json()["message"]
        assert c.post("/v1/query/sids", json={"query": "drill"}).status_code == 200
        assert c.post("/v1/items/encode", json={**upsert, "upsert": False}).status_code == 200
        relevance = {"query": "drill", "item_ids": ["new-2"]}
        assert c.post("/v1/relevance", json=relevance).status_code == 200


def test_unreachable_redis_is_503_with_retry_after_not_a_hang(bundle_dir):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(bundle=bundle_dir, redis_url=dead, store_timeout_s=0.5)
    with TestClient(create_app(settings)) as c:
        start = time.perf_counter()
        r = c.post("/v1/query/sids", json={"query": "drill"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"] == "store_unavailable"
        assert c.get("/readyz").status_code == 503
        assert time.perf_counter() - start < 5
        sids_only = c.post("/v1/query/sids", json={"query": "drill", "candidates": 0})
        assert sids_only.status_code == 200  # the model side still works


def test_unreachable_triton_is_503(bundle_dir):
    settings = Settings(
        bundle=bundle_dir, triton_url=f"127.0.0.1:{free_port()}", inference_timeout_s=1.0
    )
    with TestClient(create_app(settings)) as c:
        start = time.perf_counter()
        r = c.post("/v1/query/sids", json={"query": "drill"})
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "backend_unavailable"
        assert c.get("/readyz").status_code == 503
        assert time.perf_counter() - start < 10


def test_a_silent_triton_is_503_within_the_timeout_not_a_hang(bundle_dir):
    import socket

    with socket.socket() as server:  # accepts connections (backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        url = f"127.0.0.1:{server.getsockname()[1]}"
        settings = Settings(bundle=bundle_dir, triton_url=url, inference_timeout_s=1.0)
        with TestClient(create_app(settings)) as c:
            start = time.perf_counter()
            r = c.post("/v1/query/sids", json={"query": "drill"})
            took = time.perf_counter() - start
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "backend_unavailable"
    assert took < 5  # the 1 s bound per call, not gRPC's own minutes


def test_the_gateway_answers_soon_after_a_missing_triton_comes_up(
    triton_bundle_dir, triton_repo_dir, tmp_path
):
    """Triton away for 20 s (gRPC's own backoff would have grown to ~7 s between attempts,
    and to 120 s after a few minutes), then up: answers within about
    `triton_reconnect_max_s` of Triton being ready, from the same gateway."""
    from tests.triton_server import free_ports, run_tritonserver

    ports = free_ports(3)
    settings = Settings(
        bundle=triton_bundle_dir,
        triton_url=f"127.0.0.1:{ports[1]}",
        inference_timeout_s=1.0,
        triton_reconnect_max_s=0.5,
    )
    body = {"query": "drill", "candidates": 0}
    with TestClient(create_app(settings)) as c:
        away = time.monotonic()
        while time.monotonic() - away < 20:
            r = c.post("/v1/query/sids", json=body)
            assert r.status_code == 503 and r.json()["error"] == "backend_unavailable"
            time.sleep(0.5)
        with run_tritonserver(triton_repo_dir, tmp_path / "triton", ports=ports):
            ready = time.monotonic()
            while (r := c.post("/v1/query/sids", json=body)).status_code != 200:
                assert time.monotonic() - ready < 10, r.text
                time.sleep(0.1)
            took = time.monotonic() - ready
            assert c.get("/readyz").status_code == 200
    assert took < 2.0, f"first answer {took:.1f} s after Triton was ready"


def test_triton_backend_gives_the_same_answers_as_embedded(bundle_dir, triton_server):
    """The real tritonserver (CPU variant of the repository) behind the gateway."""
    body = {"queries": QUERIES, "beam_width": 6, "top_k": 4, "candidates": 10}
    items = {"items": [{"item_id": "x1", "text": "Corvex Led Light Bulb for Lighting"}]}
    with TestClient(create_app(Settings(bundle=bundle_dir))) as emb:
        want_q = emb.post("/v1/query/sids", json=body).json()
        want_e = emb.post("/v1/items/encode", json=items).json()
    settings = Settings(bundle=bundle_dir, triton_url=triton_server.grpc_url)
    with TestClient(create_app(settings)) as tri:
        assert tri.get("/readyz").json()["backend"] == "triton"
        got_q = tri.post("/v1/query/sids", json=body).json()
        got_e = tri.post("/v1/items/encode", json=items).json()
    assert [[s["sid"] for s in r["sids"]] for r in got_q["results"]] == [
        [s["sid"] for s in r["sids"]] for r in want_q["results"]
    ]
    for g, w in zip(got_q["results"], want_q["results"], strict=True):
        np.testing.assert_allclose(
            [s["log_prob"] for s in g["sids"]], [s["log_prob"] for s in w["sids"]], atol=1e-4
        )
        assert [c["item_id"] for c in g["candidates"]] == [c["item_id"] for c in w["candidates"]]
    assert got_e == want_e


def test_readyz_names_the_triton_model_that_is_not_served(bundle_dir, triton_server):
    """A Triton repository materialised before format 2 lacks sid_decoder_first."""
    settings = Settings(
        bundle=bundle_dir, triton_url=triton_server.grpc_url, triton_decoder_first="sid_gone"
    )
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503, r.text
    assert "not ready: sid_gone" in r.json()["message"]


def test_readyz_refuses_a_triton_serving_another_model_version(
    triton_bundle_dir, triton_server, tmp_path
):
    """The Triton of another export (a rollout step done out of order) would give this
    gateway's trie another model's scores: valid-looking SIDs, all wrong."""
    from service.backends.triton import served_model_version
    from tests.triton_server import variant_bundle

    other = variant_bundle(triton_bundle_dir, tmp_path / "other")
    served, ours = load_bundle(triton_bundle_dir).model_version, load_bundle(other).model_version
    assert served != ours
    with TestClient(create_app(Settings(bundle=other, triton_url=triton_server.grpc_url))) as c:
        r = c.get("/readyz")
    assert r.status_code == 503, r.text
    message = r.json()["message"]
    assert f"sid_encoder {served}" in message and f"bundle is {ours}" in message, message
    assert "sid_decoder_first" in message and "sid_decoder " in message, message
    settings = Settings(bundle=triton_bundle_dir, triton_url=triton_server.grpc_url)
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").status_code == 200
    assert served_model_version({"config": {"parameters": {}}}) is None


def test_a_running_gateway_refuses_a_triton_restarted_on_another_model_and_comes_back(
    triton_bundle_dir, triton_repo_dir, tmp_path
):
    """Triton restarted on another export's repository (same ports) while the gateway runs:
    503s naming both versions, not another model's scores in this gateway's trie; its own
    model back, the same answers. Without `triton_check_s` (0) the wrong answers are 200s."""
    from export.triton_repo import materialise
    from tests.triton_server import free_ports, run_tritonserver, variant_bundle

    other = variant_bundle(triton_bundle_dir, tmp_path / "other")
    other_repo = materialise(other, tmp_path / "other-repo", "cpu")
    ports = free_ports(3)
    body = {"queries": QUERIES, "candidates": 0}

    def gateway(check_s: float) -> TestClient:
        settings = Settings(
            bundle=triton_bundle_dir,
            triton_url=f"127.0.0.1:{ports[1]}",
            inference_timeout_s=1.0,
            triton_reconnect_max_s=0.2,
            triton_check_s=check_s,
        )
        return TestClient(create_app(settings))

    def first(c: TestClient, ok) -> httpx.Response:
        """The first answer that `ok` accepts, within 10 s."""
        deadline = time.monotonic() + 10
        while not ok(r := c.post("/v1/query/sids", json=body)):
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        return r

    with gateway(0.3) as c, gateway(0) as unchecked:
        with run_tritonserver(triton_repo_dir, tmp_path / "t1", ports=ports):
            want = first(c, lambda r: r.status_code == 200).json()
            first(unchecked, lambda r: r.status_code == 200)
        with run_tritonserver(other_repo, tmp_path / "t2", ports=ports):
            ready = time.monotonic()
            r = first(c, lambda r: r.status_code != 503 or "another model" in r.text)
            took = time.monotonic() - ready
            assert r.status_code == 503, r.text  # never a 200 from the other model
            assert r.json()["error"] == "backend_unavailable"
            message = r.json()["message"]
            assert load_bundle(other).model_version in message, message
            assert load_bundle(triton_bundle_dir).model_version in message, message
            for _ in range(5):
                time.sleep(0.1)
                assert c.post("/v1/query/sids", json=body).status_code == 503
            assert c.get("/readyz").status_code == 503
            assert first(unchecked, lambda r: r.status_code != 503).status_code == 200
        with run_tritonserver(triton_repo_dir, tmp_path / "t3", ports=ports):
            assert first(c, lambda r: r.status_code == 200).json() == want
            assert c.get("/readyz").status_code == 200
    assert took < 2.0, f"refused {took:.1f} s after the other Triton was ready"


def test_serve_reports_bad_settings_in_one_line(monkeypatch, capsys, tmp_path):
    from sidserve.cli import main

    monkeypatch.delenv("SIDSERVE_BUNDLE", raising=False)
    assert main(["serve"]) == 2
    assert "SIDSERVE_BUNDLE: Field required" in capsys.readouterr().err
    monkeypatch.setenv("SIDSERVE_PORT", "abc")
    assert main(["serve", "--bundle", str(tmp_path)]) == 2
    assert "SIDSERVE_PORT" in capsys.readouterr().err
    monkeypatch.delenv("SIDSERVE_PORT")
    assert main(["serve", "--bundle", str(tmp_path / "none")]) == 2
    assert "bundle directory does not exist" in capsys.readouterr().err


def test_serve_refuses_a_taken_port_before_loading_the_bundle(bundle_dir, monkeypatch, capsys):
    import socket

    import service.app
    from sidserve.cli import main

    def never(*_args, **_kwargs):
        raise AssertionError("the bundle was loaded")

    monkeypatch.setattr(service.app, "create_app", never)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--bundle", str(bundle_dir), "--port", str(port)]
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err, err


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "drill", "item_ids": []}, "item_ids"),
        ({"query": " ", "item_ids": ["a"]}, "query"),
        ({"query": "drill", "item_ids": ["a"], "beam_width": 2, "top_k": 3}, "top_k"),
        ({"query": "drill", "item_ids": ["a"], "beam_width": 99}, "beam_width"),
        ({"query": "\x00", "item_ids": ["a"]}, "query: has no character"),
        ({"query": "drill", "item_ids": "a"}, "item_ids"),
    ],
)
def test_bad_relevance_input_is_422(client, body, field):
    r = client.post("/v1/relevance", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


def test_lone_sessions_have_more_threads_and_give_the_same_answers(bundle_dir, monkeypatch):
    from service.backends import embedded

    bundle = load_bundle(bundle_dir)
    monkeypatch.setattr(embedded, "usable_cpus", lambda: 4)
    backend = embedded.EmbeddedBackend(bundle, threads=1, lone_threads=2)
    assert backend.lone is not None
    assert backend.lone.encoder.get_session_options().intra_op_num_threads == 2
    assert backend.encoder.get_session_options().intra_op_num_threads == 1
    tok = BundleTokenizer(bundle.file("tokenizer.json"), bundle.tokenizer)
    trie = CompactTrie.from_codes(bundle.semantic_sids, bundle.codebook_sizes)
    for (paths, logp), (lone_paths, lone_logp) in zip(
        search_beams(backend, tok, QUERIES, trie, 10),
        search_beams(backend.lone, tok, QUERIES, trie, 10),
        strict=True,
    ):
        np.testing.assert_array_equal(lone_paths, paths)
        np.testing.assert_allclose(lone_logp, logp, rtol=1e-6)
    # no second set where it would not have more threads
    assert embedded.EmbeddedBackend(bundle, threads=1, lone_threads=1).lone is None
    assert embedded.EmbeddedBackend(bundle, threads=0, lone_threads=2).lone is None
    assert embedded.EmbeddedBackend(bundle, threads=2, lone_threads=2).lone is None
    monkeypatch.setattr(embedded, "usable_cpus", lambda: 1)  # capped at the CPUs it may use
    assert embedded.EmbeddedBackend(bundle, threads=1, lone_threads=4).lone is None


def test_usable_cpus_follow_the_affinity_mask_or_else_the_cpu_count(monkeypatch):
    import os

    from service.backends.embedded import usable_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cpus() == 3
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert usable_cpus() == 8


@pytest.mark.parametrize(
    ("cpus", "lone_threads", "counted"), [(2, 2, 1.0), (2, 1, 0.0), (1, 2, 0.0)]
)
def test_a_lone_query_is_counted_on_the_lone_sessions(
    bundle_dir, monkeypatch, cpus, lone_threads, counted
):
    from service.backends import embedded

    monkeypatch.setattr(embedded, "usable_cpus", lambda: cpus)
    settings = Settings(bundle=bundle_dir, onnx_lone_threads=lone_threads)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/query/sids", json={"query": QUERIES[0], "candidates": 0})
        assert r.status_code == 200, r.text
        metrics = c.get("/metrics").text
    assert f"sidserve_lone_batches_total {counted}" in metrics
