"""Room state is freed when idle (issue 10, defect 2).

Every room that got a message or a remote subscriber used to leave an entry
in its owner's room table for good: one connection cycling SUBSCRIBE /
UNSUBSCRIBE over millions of names grew the server without bound. Now an
owned room with no subscriber anywhere and no message for `--room-idle-s`
is freed, and its seq is read from the store when it comes back.
"""
import time

from stampede_client import build_frame, uid

NAMES = 200_000
BATCH = 2_000


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def churn(c, prefix: str, n: int):
    """SUBSCRIBE then UNSUBSCRIBE n distinct rooms, a batch per write,
    each batch ending with a receipt so the server is kept up with."""
    for start in range(0, n, BATCH):
        frames = []
        for i in range(start, min(start + BATCH, n)):
            frames.append(build_frame("SUBSCRIBE", [("destination", f"/topic/{prefix}-{i}"), ("id", "s")]))
            frames.append(build_frame("UNSUBSCRIBE", [("id", "s")]))
        rid = f"b{start}"
        frames.append(build_frame("BEGIN", [("transaction", rid), ("receipt", rid)]))
        frames.append(build_frame("ABORT", [("transaction", rid)]))
        c.send_raw(b"".join(frames))
        c.wait_for(lambda f, rid=rid: f.command == "RECEIPT" and f["receipt-id"] == rid, timeout=30)


def wait_idle_freed(srv, idle_s: float):
    """Past the idle time plus the sweeper's pace (10,000 rooms a tick)."""
    time.sleep(idle_s + 2.5)


def test_rooms_churned_through_are_freed_after_the_idle_time(server_factory):
    """Three rounds of churn over fresh names: without freeing, each round
    adds its rooms for good (the owner's table triples); with it, the
    second and third rounds reuse the memory the first one left."""
    # No subscribe rate: the churn must reach the room tables at full speed.
    srv = server_factory("--shards", "2", "--room-idle-s", "1", "--max-subscribe-rate", "0")
    c = srv.connected("tcp")
    base = rss_kib(srv.proc.pid)
    peaks = []
    for _ in range(3):
        churn(c, uid("churn"), NAMES)
        peaks.append(rss_kib(srv.proc.pid))
        wait_idle_freed(srv, 1)
    first = peaks[0] - base
    # Half the rooms are owned by the other shard: each leaves an entry
    # there until it is freed. Enough to measure: tens of MB.
    assert first > 8 * 1024, f"the churn grew RSS by only {first} KiB; nothing to measure"
    # Without freeing, every round adds its rooms for good (measured: +29,
    # +21, +40 MB). With it, a later round reuses what the earlier ones
    # freed: the third adds less than half of what the first did (under
    # load some rooms of a round are freed while it still runs, so the
    # rounds' own sizes vary; what they add to each other does not).
    assert peaks[2] - peaks[1] < first / 2, \
        f"RSS above {base} KiB after each round: {[p - base for p in peaks]} KiB"
    # The server is fine afterwards: a room that was freed works again.
    sub = srv.connected("tcp")
    room = uid("again")
    sub.subscribe(f"/topic/{room}", "s1", receipt="r")
    c.send_frame("SEND", [("destination", f"/topic/{room}")], "hi")
    assert sub.expect_message().body == b"hi"


def test_a_freed_room_continues_its_seqs_from_the_store(server_factory):
    # No subscribe rate: the churn must reach the room tables at full speed.
    srv = server_factory("--shards", "2", "--room-idle-s", "1", "--max-subscribe-rate", "0")
    room = uid("seq")
    dest = f"/topic/{room}"
    pub = srv.connected("tcp")
    for i in range(3):
        pub.send_frame("SEND", [("destination", dest), ("receipt", f"r{i}")], f"m{i}")
        pub.wait_for(lambda f, i=i: f.command == "RECEIPT" and f["receipt-id"] == f"r{i}")
    wait_idle_freed(srv, 1)
    sub = srv.connected("tcp")
    sub.subscribe(dest, "s1", receipt="rs")
    pub.send_frame("SEND", [("destination", dest)], "after")
    m = sub.expect_message()
    assert (m.body, m["x-seq"]) == (b"after", "4")
