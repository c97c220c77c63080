"""Back-pressure across shards (issue 10, defect 1).

A publisher whose connection is on a shard that does *not* own the room
used to be read as fast as it could send: its SENDs piled up in the
shard-to-shard queues (bounded in batches, not in messages or bytes) while
the owner waited for the SQLite writer, and the server's memory grew by
~200 MB/s. Now the forwarding shard stops reading once what it has in
flight towards the owner reaches `--max-peer-bytes`, whatever the topology.
"""
import socket
import threading
import time

from stampede_client import build_frame, owner_shard, uid

SHARDS = 2
FLOOD_S = 4.0
# What the flood may add to the server's RSS. Before the fix it added
# hundreds of MB in 4 s; the bound the settings below allow is a few MB
# in flight plus the writer's queue.
MAX_GROWTH_KIB = 96 * 1024


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def flood(sock: socket.socket, frames: bytes, until: float, sent: list):
    sock.settimeout(0.2)
    total = 0
    while time.monotonic() < until:
        try:
            total += sock.send(frames)
        except socket.timeout:
            continue
        except OSError:
            break
    sent.append(total)


def test_a_publisher_on_a_non_owner_shard_is_paused_when_the_owner_cannot_keep_up(server_factory):
    # One message per commit with an fsync each: the writer is far slower
    # than the flood, so the owner is backed up for the whole run.
    # No publish rate limit: the flood must meet the mesh's back-pressure,
    # not the per-connection rate that would otherwise slow it first.
    srv = server_factory("--shards", str(SHARDS), "--persist-batch", "1", "--durability", "full",
                         "--persist-queue", "1024", "--max-publish-rate", "0")
    by_shard = srv.on_distinct_shards(SHARDS)
    assert len(by_shard) == SHARDS, "connections did not spread over both shards"
    pub = by_shard[0]
    room = next(r for r in (uid("flood") for _ in range(1000)) if owner_shard(r, SHARDS) == 1)
    frame = build_frame("SEND", [("destination", f"/topic/{room}")], "x" * 200)
    frames = frame * 256
    base = rss_kib(srv.proc.pid)
    sent: list = []
    until = time.monotonic() + FLOOD_S
    t = threading.Thread(target=flood, args=(pub.sock, frames, until, sent), daemon=True)
    t.start()
    peak = base
    answered = []
    while time.monotonic() < until:
        time.sleep(0.25)
        peak = max(peak, rss_kib(srv.proc.pid))
        if not answered and time.monotonic() > until - FLOOD_S / 2:
            # Other clients are served meanwhile.
            t0 = time.monotonic()
            c = srv.connected("tcp")
            answered.append(time.monotonic() - t0)
            c.close()
    t.join(5)
    growth = peak - base
    assert sent and sent[0] > 0
    assert growth < MAX_GROWTH_KIB, \
        f"RSS grew by {growth / 1024:.0f} MiB while the flood sent {sent[0] / 1e6:.0f} MB"
    assert answered and answered[0] < 2.0, f"a new client waited {answered}"
