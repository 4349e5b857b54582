"""The journal: items upserted through `/v1/items/encode` and deleted through
`/v1/items/delete` stay so across `sidserve load-items` (a reload of their version, the load
of the next one) and a rollout (`--journal-only`), on the tiny exported bundle and a real
Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.bundle import load_bundle
from service.settings import Settings
from service.stores.memory import MemoryStore
from service.stores.redis_store import DELETED_KEY, UPSERTS_KEY, Keys, RedisStore
from sidserve.cli import main
from sidserve.sids import format_sid
from tests.test_stores import dump
from tests.triton_server import variant_bundle

COLD = {
    "new-1": "Cordless Hammer Drill 20V with two batteries",
    "new-2": "Outdoor Patio Umbrella 9 ft Tilt",
}


@pytest.fixture
def bundle_dir(tiny_export) -> Path:
    return tiny_export["bundle"]


def load_items(bundle: Path, url: str, *flags: str) -> None:
    assert main(["load-items", "--bundle", str(bundle), "--redis-url", url, *flags]) == 0


def upsert(c: TestClient, items: dict[str, str]) -> dict[str, str]:
    body = {"items": [{"item_id": i, "text": t} for i, t in items.items()], "upsert": True}
    r = c.post("/v1/items/encode", json=body)
    assert r.status_code == 200, r.text
    return {it["item_id"]: it["sid"] for it in r.json()["items"]}


def path_of(c: TestClient, text: str) -> str:
    """The semantic path the gateway encodes a text to (a preview: nothing stored)."""
    body = {"items": [{"item_id": "probe", "text": text}], "upsert": False}
    r = c.post("/v1/items/encode", json=body)
    assert r.status_code == 200, r.text
    return r.json()["items"][0]["sid"].rsplit("-", 1)[0]


def found(c: TestClient, ids: list[str]) -> dict[str, dict]:
    r = c.post("/v1/relevance", json={"query": "cordless drill", "item_ids": ids})
    assert r.status_code == 200, r.text
    return {it["item_id"]: it for it in r.json()["items"] if it["found"]}


def test_upserts_are_journalled_with_their_text_only_when_stored(bundle_dir, redis_server):
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    load_items(bundle_dir, redis_server)
    with TestClient(create_app(Settings(bundle=bundle_dir, redis_url=redis_server))) as c:
        upsert(c, COLD)
        body = {"items": [{"item_id": "new-3", "text": "Brass Door Knob"}], "upsert": False}
        assert c.post("/v1/items/encode", json=body).status_code == 200  # a preview: not kept
        upsert(c, {"new-1": "Cordless Hammer Drill 18V"})  # the last text is the one kept
        assert client.hgetall(UPSERTS_KEY) == {**COLD, "new-1": "Cordless Hammer Drill 18V"}
        client.hdel(Keys(load_bundle(bundle_dir).model_version).meta, "loaded")
        r = c.post("/v1/items/encode", json={**body, "upsert": True})  # refused: not journalled
        assert r.status_code == 503 and "new-3" not in client.hgetall(UPSERTS_KEY)

    async def bad_texts() -> None:
        store = RedisStore(redis_server, "v1", 2)
        for s in (store, MemoryStore.from_bundle(load_bundle(bundle_dir))):
            for texts in (["one"], ["one", " "]):
                with pytest.raises(ValueError, match="2 non-blank strings"):
                    await s.upsert([("a", np.array([1, 1])), ("b", np.array([1, 2]))], None, texts)
        await store.close()

    asyncio.run(bad_texts())


def test_a_reload_re_encodes_the_upserted_items(bundle_dir, redis_server, capsys):
    """The same SIDs and vectors as before the reload for cold-start items, the table's SID
    for a catalog item (the bundle's word on it), the same keys on every load, none of it
    with `--no-journal`."""
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    bundle = load_bundle(bundle_dir)
    catalog_id, keys = bundle.item_ids[0], Keys(bundle.model_version)
    settings = Settings(bundle=bundle_dir, redis_url=redis_server)
    load_items(bundle_dir, redis_server)
    ids = [*COLD, catalog_id]
    with TestClient(create_app(settings)) as c:
        upsert(c, {**COLD, catalog_id: "Garden Hose 50 ft Heavy Duty"})
        before = found(c, ids)
    assert set(before) == set(ids)
    journal = client.hgetall(UPSERTS_KEY)
    capsys.readouterr()

    load_items(bundle_dir, redis_server)
    out = capsys.readouterr().out
    assert f"loaded {len(bundle.item_ids) + 2} items" in out, out
    assert "2 upserted items from sidserve:upserts re-encoded" in out, out
    assert "1 more are in the bundle's table" in out, out
    assert "0 deleted items (sidserve:deleted) left out" in out, out
    with TestClient(create_app(settings)) as c:
        after = found(c, ids)
    assert set(after) == set(ids)
    for item in COLD:
        assert after[item]["sid"] == before[item]["sid"]
        assert after[item]["similarity"] == pytest.approx(before[item]["similarity"], abs=1e-3)
    assert after[catalog_id]["sid"] == format_sid(bundle.item_sids[0])
    assert client.hget(keys.meta, "upserts_replayed") == "2"
    assert client.hgetall(UPSERTS_KEY) == journal  # the journal is read, never consumed

    first = dump(client)
    load_items(bundle_dir, redis_server)
    assert dump(client) == first

    load_items(bundle_dir, redis_server, "--no-journal")
    assert "journal not applied (--no-journal)" in capsys.readouterr().out
    with TestClient(create_app(settings)) as c:
        assert set(found(c, ids)) == {catalog_id}
    assert client.hget(keys.meta, "upserts_replayed") == "0"
    assert client.hgetall(UPSERTS_KEY) == journal


def test_a_rollout_carries_the_old_versions_upserts_to_the_new_one(
    bundle_dir, redis_server, tmp_path, capsys
):
    """Upserts taken by V1's gateways before V2's load come with the load; those taken after
    it (the rollout still under way) with `load-items --journal-only` once it is over."""
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    v2_dir = variant_bundle(bundle_dir, tmp_path / "v2")
    v1 = Settings(bundle=bundle_dir, redis_url=redis_server)
    v2 = Settings(bundle=v2_dir, redis_url=redis_server)
    load_items(bundle_dir, redis_server)
    with TestClient(create_app(v1)) as old, TestClient(create_app(v2)) as new:
        upsert(old, {"new-1": COLD["new-1"]})
        load_items(v2_dir, redis_server)
        carried = found(new, ["new-1"])["new-1"]
        path = path_of(old, COLD["new-1"])
        assert carried["sid"].rsplit("-", 1)[0] == path  # the same graphs: the same path

        upsert(old, {"new-2": COLD["new-2"]})  # during the rollout: V1's namespace only
        assert "new-2" not in found(new, ["new-2"])
        capsys.readouterr()
        load_items(v2_dir, redis_server, "--journal-only")
        assert "2 upserted items from sidserve:upserts re-encoded" in capsys.readouterr().out
        got = found(new, ["new-1", "new-2"])
        assert got["new-1"]["sid"] == carried["sid"]  # same path: its SID is kept
        assert got["new-2"]["sid"].rsplit("-", 1)[0] == path_of(old, COLD["new-2"])

    pattern = Keys(load_bundle(v2_dir).model_version).pattern
    first = dump(client, pattern)
    load_items(v2_dir, redis_server, "--journal-only")
    assert dump(client, pattern) == first  # nothing moves when nothing changed


def test_deleted_items_stay_deleted_across_loads_and_rollouts(
    bundle_dir, redis_server, tmp_path, capsys
):
    """A deleted catalog item and a deleted upserted one are left out of every later load,
    of this version or the next (or removed from it by `--journal-only`), until an upsert
    brings one back."""
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    bundle = load_bundle(bundle_dir)
    catalog_id, other_id = bundle.item_ids[0], bundle.item_ids[1]
    v2_dir = variant_bundle(bundle_dir, tmp_path / "v2")
    v1 = Settings(bundle=bundle_dir, redis_url=redis_server)
    v2 = Settings(bundle=v2_dir, redis_url=redis_server)
    ids = [catalog_id, other_id, *COLD]
    load_items(bundle_dir, redis_server)
    with TestClient(create_app(v1)) as c:
        upsert(c, COLD)
        r = c.post("/v1/items/delete", json={"item_ids": [catalog_id, "new-1", "never"]})
        assert r.status_code == 200, r.text
        assert r.json()["deleted"] == [catalog_id, "new-1"] and r.json()["unknown"] == ["never"]
    assert client.smembers(DELETED_KEY) == {catalog_id, "new-1", "never"}
    assert client.hgetall(UPSERTS_KEY) == {"new-2": COLD["new-2"]}
    capsys.readouterr()

    load_items(bundle_dir, redis_server)  # the same version again
    assert "1 deleted items (sidserve:deleted) left out" in capsys.readouterr().out
    assert client.hget(Keys(bundle.model_version).meta, "deleted_left_out") == "1"
    with TestClient(create_app(v1)) as c:
        assert set(found(c, ids)) == {other_id, "new-2"}
        load_items(v2_dir, redis_server)  # the next version
        with TestClient(create_app(v2)) as new:
            assert set(found(new, ids)) == {other_id, "new-2"}
            # during the rollout: an old gateway deletes, the new version still has the item
            assert c.post("/v1/items/delete", json={"item_ids": [other_id]}).status_code == 200
            assert other_id in found(new, ids)
            capsys.readouterr()
            load_items(v2_dir, redis_server, "--journal-only")
            assert "1 deleted items (sidserve:deleted) removed" in capsys.readouterr().out
            assert set(found(new, ids)) == {"new-2"}
            # back, through an old gateway: the next version gets it from the journal
            upsert(c, {catalog_id: "Cordless Drill 20V back in stock"})
            assert catalog_id not in found(new, ids)
            load_items(v2_dir, redis_server, "--journal-only")
            assert set(found(new, ids)) == {catalog_id, "new-2"}
    assert client.smembers(DELETED_KEY) == {other_id, "new-1", "never"}
    load_items(bundle_dir, redis_server)
    with TestClient(create_app(v1)) as c:
        assert set(found(c, ids)) == {catalog_id, "new-2"}
        # the bundle's own SID: an id the table holds keeps the table's SID
        assert found(c, [catalog_id])[catalog_id]["sid"] == format_sid(bundle.item_sids[0])


def test_journal_only_needs_the_version_loaded(bundle_dir, redis_server, capsys):
    argv = ["load-items", "--bundle", str(bundle_dir), "--redis-url", redis_server]
    assert main([*argv, "--journal-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sidserve load-items: error: model version "), err
    assert "not (completely) loaded" in err[-1] and "load-items" in err[-1]
    with pytest.raises(SystemExit) as exited:  # argparse: one or the other
        main([*argv, "--journal-only", "--no-journal"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_journal_only_never_undoes_what_gateways_did_since_it_read_the_journal(
    bundle_dir, redis_server
):
    """`--journal-only` reads the journal, encodes, then writes: an upsert or a delete that a
    gateway made in between stands (the scripts' replay mode checks the journal again)."""
    from service.load_items import apply_replay, read_journal, reencode

    client = redis.Redis.from_url(redis_server, decode_responses=True)
    bundle = load_bundle(bundle_dir)
    catalog_id, keys = bundle.item_ids[0], Keys(bundle.model_version)
    load_items(bundle_dir, redis_server)
    with TestClient(create_app(Settings(bundle=bundle_dir, redis_url=redis_server))) as c:
        upsert(c, COLD)
        delete = c.post("/v1/items/delete", json={"item_ids": [catalog_id, "new-2"]})
        assert delete.json()["deleted"] == [catalog_id, "new-2"]
        replay = reencode(bundle, read_journal(client), progress=False)
        assert replay.item_ids == ["new-1"] and replay.deleted == sorted([catalog_id, "new-2"])
        # meanwhile: new-1 gets another text and comes back deleted; the catalog item is back
        upsert(c, {catalog_id: "Cordless Drill 20V back in stock"})
        assert c.post("/v1/items/delete", json={"item_ids": ["new-1"]}).status_code == 200
        before = dump(client)
        written, removed = asyncio.run(
            apply_replay(redis_server, bundle, replay, timeout_s=5.0, batch=10)
        )
        assert (written, removed) == (0, 0)  # new-2: deleted already; the rest moved on
        assert dump(client) == before
        assert set(found(c, [catalog_id, *COLD])) == {catalog_id}
    assert client.hget(keys.meta, "items") == str(len(bundle.item_ids))


def test_a_reload_catches_up_with_what_gateways_journalled_while_it_encoded(
    bundle_dir, redis_server, monkeypatch, capsys
):
    """Reloading a version that gateways serve: an upsert and a delete they take after the
    load read the journal (while it encodes) are applied once the table is rebuilt."""
    import service.load_items as load_module

    bundle = load_bundle(bundle_dir)
    catalog_id = bundle.item_ids[0]
    load_items(bundle_dir, redis_server)
    with TestClient(create_app(Settings(bundle=bundle_dir, redis_url=redis_server))) as c:
        upsert(c, {"new-1": COLD["new-1"]})
        rebuild = load_module.load_table

        def gateways_meanwhile(*args, **kwargs):
            upsert(c, {"new-2": COLD["new-2"]})
            assert c.post("/v1/items/delete", json={"item_ids": [catalog_id]}).status_code == 200
            return rebuild(*args, **kwargs)

        monkeypatch.setattr(load_module, "load_table", gateways_meanwhile)
        capsys.readouterr()
        load_items(bundle_dir, redis_server)
        assert "then 2 changes journalled during the load" in capsys.readouterr().out
        assert set(found(c, [catalog_id, *COLD])) == set(COLD)
