"""Multi-shard behaviour: total order per room across shards, room-affine WebSocket placement."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest

from stampede_client import build_frame, fnv1a64, owner_shard, uid

SHARDS = 4


def owner(room: str, shards: int = SHARDS) -> int:
    return owner_shard(room, shards)


def test_fnv1a64_reference_values():
    # published FNV-1a 64 test vectors, to make sure the test's own hash is right
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


@pytest.fixture
def sharded(server_factory):
    return server_factory("--shards", str(SHARDS))


def test_sessions_report_shard_index(sharded):
    seen = set()
    for i in range(40):
        c = sharded.connected("tcp" if i % 2 else "ws")
        assert 0 <= c.shard < SHARDS
        seen.add(c.shard)
        c.close()
        if len(seen) == SHARDS:
            break
    assert len(seen) >= 3, f"connections did not spread over shards: {seen}"


def test_total_order_across_shards(sharded):
    srv = sharded
    room = uid()
    dest = f"/topic/{room}"
    subs = []
    shards = set()
    for i in range(60):
        s = srv.connected("ws" if i % 2 else "tcp")
        s.subscribe(dest, f"sub-{i}")
        subs.append(s)
        shards.add(s.shard)
        if len(shards) >= 3 and len(subs) >= 6:
            break
    assert len(shards) >= 3, f"subscribers only landed on shards {shards}"

    pubs = [srv.connected("tcp", login="p0"), srv.connected("ws", login="p1"), srv.connected("tcp", login="p2")]
    counts = [334, 333, 333]
    total = sum(counts)

    results = {}
    errors = []

    def read(i, s):
        try:
            results[i] = s.messages(total, timeout=45)
        except BaseException as e:  # noqa: BLE001
            errors.append(f"subscriber {i} (shard {s.shard}): {e}")

    def publish(k, p, n):
        try:
            batch = b""
            for j in range(n):
                batch += build_frame("SEND", [("destination", dest), ("publisher", f"p{k}")], f"p{k}:{j}")
                if len(batch) > 4000:
                    p.send_raw(batch)
                    batch = b""
            if batch:
                p.send_raw(batch)
            p.ping_roundtrip(f"/topic/{uid()}", timeout=30)
        except BaseException as e:  # noqa: BLE001
            errors.append(f"publisher {k}: {e}")

    readers = [threading.Thread(target=read, args=(i, s)) for i, s in enumerate(subs)]
    writers = [threading.Thread(target=publish, args=(k, p, n)) for k, (p, n) in enumerate(zip(pubs, counts))]
    for t in readers + writers:
        t.start()
    for t in writers + readers:
        t.join(55)
    assert not errors, errors
    assert len(results) == len(subs)

    reference = [m.text for m in results[0]]
    assert len(reference) == total
    assert sorted(reference) == sorted(f"p{k}:{j}" for k, n in enumerate(counts) for j in range(n))
    for i, msgs in results.items():
        bodies = [m.text for m in msgs]
        assert bodies == reference, f"subscriber {i} (shard {subs[i].shard}) saw a different order"
        assert [int(m["x-seq"]) for m in msgs] == list(range(1, total + 1))
        assert [m["message-id"] for m in msgs] == [f"{room}:{n}" for n in range(1, total + 1)]
        assert all(m["subscription"] == f"sub-{i}" for m in msgs)
        for m in msgs:
            k = m.text.split(":")[0]
            assert m["publisher"] == k
            assert m["x-sender"] == k
    per_pub = defaultdict(list)
    for body in reference:
        k, j = body.split(":")
        per_pub[k].append(int(j))
    for k, n in enumerate(counts):
        assert per_pub[f"p{k}"] == list(range(n)), f"publisher p{k}'s messages out of order"


def _rooms_covering_shards(per_shard: int = 2):
    by_shard = defaultdict(list)
    i = 0
    while min((len(by_shard[s]) for s in range(SHARDS)), default=0) < per_shard:
        r = f"room-{i}"
        if len(by_shard[owner(r)]) < per_shard:
            by_shard[owner(r)].append(r)
        i += 1
    return [r for s in range(SHARDS) for r in by_shard[s]]


def test_ws_room_query_lands_on_owner_shard(sharded):
    rooms = _rooms_covering_shards(2) + ["lobby", "general", "Z", "a.b~c_d-e"]
    for room in rooms:
        for _ in range(2):
            c = sharded.ws(path=f"/ws?room={room}")
            c.connect()
            assert c.shard == owner(room), \
                f"/ws?room={room}: session {c.session}, expected shard {owner(room)}"
            c.close()


def test_chat_across_moved_connections(sharded):
    srv = sharded
    rooms = _rooms_covering_shards(1)
    r_main = rooms[0]
    r_other = next(r for r in rooms if owner(r) != owner(r_main))
    dest = f"/topic/{r_main}"

    a = srv.ws(path=f"/ws?room={r_main}")
    a.connect(login="a")
    b = srv.ws(path=f"/ws?room={r_other}")
    b.connect(login="b")
    c = srv.connected("tcp", login="c")
    d = srv.connected("ws", login="d")
    assert a.shard == owner(r_main)
    assert b.shard == owner(r_other)
    clients = [a, b, c, d]
    for i, cl in enumerate(clients):
        cl.subscribe(dest, f"s{i}")
    for cl in clients:
        cl.send(dest, f"hi from {cl.session}", receipt=True)
    orders = []
    for cl in clients:
        msgs = cl.messages(4)
        orders.append([(m["x-sender"], m["x-seq"]) for m in msgs])
    assert all(o == orders[0] for o in orders)
    assert [s for s, _ in orders[0]] == ["a", "b", "c", "d"]
    assert [q for _, q in orders[0]] == ["1", "2", "3", "4"]

    # the moved connection also works for its own room, and for several rooms at once
    b.subscribe(f"/topic/{r_other}", "own")
    a.send(f"/topic/{r_other}", "to b's room", receipt=True)
    m = b.expect_message(subscription="own")
    assert m.body == b"to b's room"
    assert m["x-sender"] == "a"
    assert m["x-seq"] == "1"
