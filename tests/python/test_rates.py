"""Per-connection rates: publishing (`--max-publish-rate`, `--publish-burst`)
and subscription changes (`--max-subscribe-rate`, `--subscribe-burst`).

A client publishing faster than its rate is not refused or dropped: it is
not read until it is back under, so its own TCP window fills. Everyone else
on the shard goes on meanwhile (issue 10's soak: one flooding connection
used to take the shard's queues, and with them everyone's latency).
"""
import threading
import time

import pytest

from stampede_client import build_frame, uid

RATE = 100
BURST = 20
CHUNK = 10
N = 220
# The rate is charged after each read, so the last chunk's read need not
# wait: everything before it must.
FLOOR_S = (N - BURST - CHUNK) / RATE  # 1.9 s


def chunks():
    """One big chunk first (its read puts the connection 1.3 s over, longer
    than the heart-beat timeout below), then chunks of CHUNK."""
    c = 150
    yield 0, c
    while c < N:
        yield c, c + CHUNK
        c += CHUNK


def publish_in_chunks(pub, dest, done: list):
    """N SENDs in chunks, each chunk one write with a receipt on its last
    frame, the next written once that receipt is back (so each chunk is a
    read of its own, and a throttled connection's wait shows)."""
    for a, b in chunks():
        rid = f"c{a}"
        frames = b"".join(build_frame("SEND", [("destination", dest)], f"m{i}") for i in range(a, b - 1))
        frames += build_frame("SEND", [("destination", dest), ("receipt", rid)], f"m{b - 1}")
        pub.send_raw(frames)
        pub.expect_receipt(rid, timeout=10)
    done.append(time.monotonic())


def start_flood(srv, transport):
    room = uid("rate")
    dest = f"/topic/{room}"
    sub = srv.connected(transport)
    sub.subscribe(dest)
    pub = srv.client(transport)
    # The publisher promises a heart-beat every 500 ms and then sends none
    # while it waits out its rate (1.3 s after its first chunk): that
    # silence is the server's doing and must not count as a heart-beat
    # timeout (twice 500 ms).
    pub.connect(heart_beat="500,0")
    done: list = []
    t0 = time.monotonic()
    t = threading.Thread(target=publish_in_chunks, args=(pub, dest, done), daemon=True)
    t.start()
    return room, sub, t, t0, done


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_a_publisher_over_its_rate_is_slowed_not_refused(server_factory, transport):
    srv = server_factory("--max-publish-rate", str(RATE), "--publish-burst", str(BURST),
                         "--heartbeat-receive-ms", "200")
    room, sub, t, t0, done = start_flood(srv, transport)
    got = [f.text for f in sub.messages(N, timeout=20)]
    t.join(10)
    assert done, "the publisher did not get all its receipts"
    assert got == [f"m{i}" for i in range(N)], "every message, in order"
    elapsed = done[0] - t0
    assert elapsed >= FLOOR_S * 0.95, f"{N} messages took {elapsed:.2f} s; the rate allows no less than {FLOOR_S} s"


def test_others_on_the_shard_are_not_held_up_by_a_throttled_publisher(server_factory):
    srv = server_factory("--shards", "1", "--max-publish-rate", str(RATE), "--publish-burst", str(BURST))
    room, sub, t, t0, done = start_flood(srv, "tcp")
    other = srv.connected("tcp")
    time.sleep(0.5)  # the flooder is throttled by now, for another ~1.4 s
    sent = time.monotonic()
    other.send(f"/topic/{room}", "quiet")
    seen = []
    while True:
        f = sub.expect_message(timeout=5)
        seen.append(f.text)
        if f.text == "quiet":
            break
    waited = time.monotonic() - sent
    assert not done, "the flood ended before the quiet message came"
    assert waited < 0.5, f"the quiet message took {waited:.2f} s"
    rest = [f.text for f in sub.messages(N + 1 - len(seen), timeout=20)]
    assert [x for x in seen + rest if x != "quiet"] == [f"m{i}" for i in range(N)]
    t.join(10)


def test_zero_means_unlimited(server_factory):
    srv = server_factory("--max-publish-rate", "0", "--publish-burst", "1")
    room, sub, t, t0, done = start_flood(srv, "tcp")
    got = [f.text for f in sub.messages(N, timeout=20)]
    t.join(10)
    assert got == [f"m{i}" for i in range(N)]
    # With a burst of 1 the rate would make this take over 2 s.
    elapsed = done[0] - t0
    assert elapsed < 1.5, f"{N} messages took {elapsed:.2f} s with no rate limit"


def test_subscription_churn_is_slowed_to_its_rate(server_factory):
    # 10 at once, then 50/s: 110 SUBSCRIBE/UNSUBSCRIBE take >= 1.8 s
    # (the last chunk's read is charged after it is handled).
    srv = server_factory("--max-subscribe-rate", "50", "--subscribe-burst", "10")
    c = srv.connected("tcp")
    t0 = time.monotonic()
    ops = 0
    for chunk in range(11):
        frames = b""
        for i in range(5):
            n = chunk * 5 + i
            frames += build_frame("SUBSCRIBE", [("destination", f"/topic/churn-{n}"), ("id", "s")])
            frames += build_frame("UNSUBSCRIBE", [("id", "s")] + ([("receipt", f"u{chunk}")] if i == 4 else []))
            ops += 2
        c.send_raw(frames)
        c.expect_receipt(f"u{chunk}", timeout=10)
    elapsed = time.monotonic() - t0
    floor = (ops - 10 - 10) / 50
    assert elapsed >= floor * 0.95, f"{ops} subscription changes took {elapsed:.2f} s; the rate allows no less than {floor} s"
    # Only the churning connection waits: another is served at once.
    other = srv.connected("tcp")
    t1 = time.monotonic()
    other.subscribe("/topic/churn-other")
    assert time.monotonic() - t1 < 1.0
