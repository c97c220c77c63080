"""Cluster mode (--cluster redis://...): three nodes share rooms through Redis.

Each test starts its own redis-server on a free loopback port (the test
command installs Debian's redis-server; without it these tests are skipped
unless STAMPEDE_REQUIRE_REDIS=1, which the test command sets) and three
stampede nodes pointed at it, each with its own data dir and ports.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import ADMIN, Frame, uid
from test_fake_fcm import fake_fcm_factory, key  # noqa: F401  (fixtures)

REDIS = shutil.which("redis-server")
IP = shutil.which("ip")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A redis-server of the test's own; `wrap` runs it elsewhere (`ip
    netns exec NS`, with `host` that namespace's address)."""

    def __init__(self, base: Path, host: str = "127.0.0.1", port: int = 0, wrap: tuple = ()):
        self.base = base
        self.host = host
        self.port = port or free_port()
        self.wrap = wrap
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def start(self):
        # No persistence: a restart loses every room's state (a new epoch),
        # the hard case for the nodes.
        self.proc = subprocess.Popen(
            [*self.wrap, REDIS, "--port", str(self.port), "--bind", self.host, "--save", "",
             "--appendonly", "no", "--dir", str(self.base), "--daemonize", "no",
             # Off loopback only inside the test's own namespaces.
             "--protected-mode", "yes" if self.host == "127.0.0.1" else "no"],
            stdout=open(self.base / "redis.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError("redis-server did not start")

    def command(self, *args: str) -> bytes:
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            out = f"*{len(args)}\r\n".encode()
            for a in args:
                b = a.encode()
                out += b"$%d\r\n%s\r\n" % (len(b), b)
            s.sendall(out)
            time.sleep(0.05)
            return s.recv(65536)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def redis(tmp_path_factory):
    if REDIS is None:
        if os.environ.get("STAMPEDE_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not installed (the test command installs it)")
        pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
    r = Redis(tmp_path_factory.mktemp("redis"))
    yield r
    r.stop()


def ip(*args: str):
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=10)


class Net:
    """Hosts on one virtual LAN: a bridge in the test's own namespace and,
    per host, a network namespace with one address on it over a veth
    pair. Nodes and Redis then share a network, as on separate machines,
    not one loopback; and a host can vanish from it without a word."""

    _made = itertools.count()

    def __init__(self):
        # Interface names stay under 16 bytes; the pid keeps xdist workers apart.
        self.tag = f"{os.getpid() % 10000}{next(Net._made)}"
        self.bridge = f"stb{self.tag}"
        self.veths = itertools.count()
        self.hosts: dict = {}  # name -> (namespace, our end of its veth)
        taken = subprocess.run([IP, "-4", "-o", "addr"], capture_output=True, text=True).stdout
        third = next(x for k in range(256) if f"10.231.{(x := (os.getpid() + 37 * k) % 256)}." not in taken)
        self.prefix = f"10.231.{third}"
        ip("link", "add", self.bridge, "type", "bridge")
        # A bridge left to itself takes the lowest MAC of its ports, so it
        # changes when a host goes; the hosts' neighbour entries for us,
        # kept fresh by our ACKs, would then point nowhere.
        ip("link", "set", self.bridge, "address", "02:00:0a:e7:ff:fe")
        ip("addr", "add", f"{self.prefix}.254/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def host(self, name: str, octet: int) -> tuple:
        """A host `name` at `.octet`: its address and the command that runs
        a process there. The same name and octet again (after `remove`) is
        a new host with the same address and MAC (a promoted replica
        behind a floating address)."""
        ns = f"stpd{self.tag}{name}"
        veth = f"stv{self.tag}x{next(self.veths)}"
        ip("netns", "add", ns)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", veth, "master", self.bridge)
        ip("link", "set", veth, "up")
        ip("-n", ns, "link", "set", "eth0", "address", f"02:00:0a:e7:{octet // 256:02x}:{octet % 256:02x}")
        ip("-n", ns, "addr", "add", f"{self.prefix}.{octet}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        self.hosts[name] = (ns, veth)
        return f"{self.prefix}.{octet}", (IP, "netns", "exec", ns)

    def cut(self, name: str):
        """Nothing reaches `name` or leaves it any more."""
        ip("link", "set", self.hosts[name][1], "down")

    def remove(self, name: str):
        """`name` is gone, and with it every socket it had. (A namespace
        lives on, unnamed, while its orphaned sockets retry their FINs;
        deleting our end of the veth takes the link with it at once.)"""
        ns, veth = self.hosts.pop(name)
        ip("link", "del", veth)
        ip("netns", "del", ns)

    def close(self):
        for name in list(self.hosts):
            try:
                self.remove(name)
            except subprocess.SubprocessError:
                pass
        subprocess.run([IP, "link", "del", self.bridge], capture_output=True)


@pytest.fixture
def net():
    """A `Net`, where this machine lets us make network namespaces (root,
    iproute2); skipped elsewhere."""
    if IP is None:
        pytest.skip("no `ip` command (iproute2) for network namespaces")
    n = None
    try:
        n = Net()
        # Everything a test does once: a host, a process in it, its removal.
        _, wrap = n.host("probe", 250)
        subprocess.run([*wrap, "true"], check=True, capture_output=True, timeout=10)
        n.remove("probe")
    except (subprocess.SubprocessError, OSError) as e:
        if n is not None:
            n.close()
        err = getattr(e, "stderr", b"") or b""
        pytest.skip(f"network namespaces are not available here: {e} {err.decode(errors='replace')}")
    yield n
    n.close()


@pytest.fixture
def cluster(redis, server_factory):
    """start(n, *extra) -> n nodes on the fixture's Redis."""
    def start(n=3, *extra):
        return [server_factory("--cluster", redis.url, "--cluster-node", f"node{i}", "--shards", "2",
                               *extra) for i in range(n)]
    return start


def publish_all(nodes, room, per_node, tag="m"):
    """One publisher per node, `per_node` messages each, all at once, every
    SEND receipted. Returns the bodies sent."""
    bodies = []
    errors = []

    def run(i, node):
        try:
            c = node.connected(login=f"pub{i}")
            for k in range(per_node):
                c.send(f"/topic/{room}", f"{tag}-{i}-{k}", receipt=(k % 10 == 9 or k == per_node - 1))
            c.disconnect()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, n)) for i, n in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for i in range(len(nodes)):
        bodies += [f"{tag}-{i}-{k}" for k in range(per_node)]
    return bodies


def seqs_and_bodies(frames: list[Frame]):
    return [(int(f["x-seq"]), f.body.decode()) for f in frames]


def test_publishers_and_subscribers_on_every_node_see_one_order(cluster):
    nodes = cluster(3)
    room = uid("room")
    subs = []
    for i, n in enumerate(nodes):
        for t in ("tcp", "ws"):
            c = n.connected(transport=t, login=f"sub{i}{t}")
            c.subscribe(f"/topic/{room}")
            subs.append(c)
    bodies = publish_all(nodes, room, 40)
    seen = [seqs_and_bodies(c.messages(len(bodies), timeout=30)) for c in subs]
    first = seen[0]
    assert [s for s, _ in first] == list(range(1, len(bodies) + 1)), "seqs are 1..N without a gap"
    assert sorted(b for _, b in first) == sorted(bodies)
    for other in seen[1:]:
        assert other == first, "every subscriber on every node sees the same order"
    # Each publisher's own order holds.
    for i in range(3):
        mine = [b for _, b in first if b.startswith(f"m-{i}-")]
        assert mine == [f"m-{i}-{k}" for k in range(40)]
    for c in subs:
        c.assert_silent(0.3, "duplicate")
    # Each node stored what it delivered: the history API on any node.
    for n in nodes:
        st, _, body = n.http("GET", f"/api/rooms/{room}/messages?after=0&limit=1000", headers=ADMIN)
        assert st == 200
        import json
        got = [(m["seq"], m["body"]) for m in json.loads(body)["messages"]]
        assert got == first


def test_nodes_on_a_network_survive_redis_failing_over_to_a_new_host(net, server_factory, tmp_path_factory):
    """Redis and three nodes each in a network namespace of their own, on
    one virtual LAN: one order everywhere. Then Redis's host vanishes
    without a FIN reaching anyone (link cut, process killed, namespace
    gone) and an empty Redis comes up at the same address and MAC, as when
    a replica is promoted behind a floating address. The nodes' channel
    connections are then half-open and only ever read: their PING finds
    out, they resubscribe, and delivery goes on."""
    if REDIS is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
    raddr, rwrap = net.host("redis", 1)
    redis = Redis(tmp_path_factory.mktemp("redis"), host=raddr, port=6379, wrap=rwrap)
    try:
        nodes = []
        for i in range(3):
            addr, wrap = net.host(f"n{i}", 10 + i)
            nodes.append(server_factory("--cluster", redis.url, "--cluster-node", f"node{i}", "--shards", "2",
                                        "--allow-insecure-auth", "true",  # the test's own private LAN
                                        listen=f"{addr}:0", stomp_listen=f"{addr}:0", wrap=wrap))
        room = uid("room")
        subs = []
        for i, n in enumerate(nodes):
            assert n.host == f"{net.prefix}.{10 + i}"
            c = n.connected(login=f"sub{i}")
            c.subscribe(f"/topic/{room}")
            subs.append(c)
        bodies = publish_all(nodes, room, 20)
        seen = [seqs_and_bodies(c.messages(len(bodies), timeout=30)) for c in subs]
        assert [s for s, _ in seen[0]] == list(range(1, len(bodies) + 1))
        assert sorted(b for _, b in seen[0]) == sorted(bodies)
        for other in seen[1:]:
            assert other == seen[0], "every node delivers the same order"

        net.cut("redis")
        redis.stop()
        net.remove("redis")
        net.host("redis", 1)
        redis.start()
        p = nodes[0].connected(login="p")
        p.send(f"/topic/{room}", "after the failover", receipt=True)
        for s in subs:
            f = s.expect_message(timeout=20)
            # The new Redis knew nothing of the room: the publisher's floor
            # keeps the seqs going up.
            assert (f.body, f["x-seq"]) == (b"after the failover", str(len(bodies) + 1))
            s.assert_silent(0.3, "duplicate")
        for i, n in enumerate(nodes):
            st, _, body = n.http("GET", "/metrics")
            reconnects = sum(float(line.split()[-1]) for line in body.decode().splitlines()
                             if line.startswith("stampede_cluster_reconnects_total"))
            assert reconnects >= 1, f"node {i} never noticed the old Redis was gone"
    finally:
        redis.stop()


def test_a_client_moved_to_another_node_resumes_without_gap_or_duplicate(cluster):
    nodes = cluster(3)
    room = uid("room")
    a = nodes[0].connected(login="alice")
    a.subscribe(f"/topic/{room}")
    p = nodes[2].connected(login="bob")
    for k in range(20):
        p.send(f"/topic/{room}", f"a{k}", receipt=True)
    got = seqs_and_bodies(a.messages(20))
    last = got[-1][0]
    a.close()
    # Missed while moving: published on node 3, node 2 has never watched
    # the room (its store has none of it).
    for k in range(20, 35):
        p.send(f"/topic/{room}", f"a{k}", receipt=True)
    b = nodes[1].connected(login="alice")
    b.subscribe(f"/topic/{room}", headers=[("x-since-seq", str(last))])
    for k in range(35, 40):
        p.send(f"/topic/{room}", f"a{k}", receipt=True)
    rest = seqs_and_bodies(b.messages(20))
    assert [s for s, _ in rest] == list(range(last + 1, last + 21))
    assert [x for _, x in got + rest] == [f"a{k}" for k in range(40)]
    b.assert_silent(0.3, "duplicate")
    # x-replay-last on a node that never saw the room's start.
    c = nodes[1].connected(login="carol")
    c.subscribe(f"/topic/{room}", headers=[("x-replay-last", "5")])
    assert [x.body.decode() for x in c.messages(5)] == [f"a{k}" for k in range(35, 40)]


def test_killing_a_node_loses_nothing_receipted(cluster):
    nodes = cluster(3)
    room = uid("room")
    watcher = nodes[1].connected(login="w")
    watcher.subscribe(f"/topic/{room}")
    victim = nodes[0].connected(login="v")
    acked = []
    for k in range(30):
        victim.send(f"/topic/{room}", f"k{k}", receipt=True)
        acked.append(f"k{k}")
    # Unreceipted in flight when the node dies: may or may not arrive.
    for k in range(30, 40):
        victim.send(f"/topic/{room}", f"k{k}")
    nodes[0].proc.send_signal(signal.SIGKILL)
    nodes[0].proc.wait(5)
    nodes[0].stopped = True
    got = [f.body.decode() for f in watcher.messages(30, timeout=10)]
    assert got == acked
    # The survivors go on; a client that was on the dead node resumes on
    # another one from its last seq.
    r = nodes[2].connected(login="v")
    r.subscribe(f"/topic/{room}", headers=[("x-since-seq", "0")])
    replay = [f.body.decode() for f in r.messages(30)]
    assert replay == acked
    r.send(f"/topic/{room}", "after", receipt=True)
    # The watcher may still get the unreceipted ones first, in order.
    late = []
    while True:
        f = watcher.expect_message(timeout=10)
        if f.body == b"after":
            break
        late.append(f.body.decode())
    assert late == [f"k{k}" for k in range(30, 30 + len(late))]


def test_redis_restart_is_survived_and_seqs_continue(cluster, redis):
    nodes = cluster(2)
    room = uid("room")
    s0 = nodes[0].connected(login="s0")
    s0.subscribe(f"/topic/{room}")
    s1 = nodes[1].connected(login="s1")
    s1.subscribe(f"/topic/{room}")
    p = nodes[1].connected(login="p")
    for k in range(10):
        p.send(f"/topic/{room}", f"b{k}", receipt=True)
    before = [int(f["x-seq"]) for f in s0.messages(10)]
    assert before == list(range(1, 11))
    s1.messages(10)
    redis.stop()
    time.sleep(0.5)
    # Published while Redis is down: held (not lost), receipted once it is back.
    sender = threading.Thread(target=lambda: [p.send(f"/topic/{room}", f"c{k}", receipt=True) for k in range(5)])
    sender.start()
    time.sleep(1.0)
    st, _, body = nodes[1].http("GET", "/readyz")
    assert st == 503 and b"Redis" in body, body
    redis.start()
    sender.join(30)
    assert not sender.is_alive()
    for s in (s0, s1):
        after = s.messages(5, timeout=20)
        assert [f.body.decode() for f in after] == [f"c{k}" for k in range(5)]
        # Redis lost the room; the floor keeps its seqs going up.
        assert [int(f["x-seq"]) for f in after] == list(range(11, 16))
        s.assert_silent(0.3, "duplicate")
    deadline = time.time() + 10
    while time.time() < deadline:
        st, _, _ = nodes[1].http("GET", "/readyz")
        if st == 200:
            break
        time.sleep(0.1)
    assert st == 200


def test_gaps_in_the_channel_are_read_back_from_the_stream(cluster, redis):
    """A message that reached the stream but not the channel (as when a
    node's channel connection drops) is read back with XRANGE."""
    nodes = cluster(1)
    room = uid("room")
    s = nodes[0].connected(login="s")
    s.subscribe(f"/topic/{room}")
    p = nodes[0].connected(login="p")
    p.send(f"/topic/{room}", "one", receipt=True)
    assert s.expect_message()["x-seq"] == "1"
    # Sequence seq 2 behind the node's back: stream only, no PUBLISH.
    blob_reply = redis.command("XRANGE", f"stampede:{{{room}}}:log", "-", "+")
    assert b"one" in blob_reply
    sneak_in(redis, room)
    p.send(f"/topic/{room}", "three", receipt=True)
    got = s.messages(2)
    assert [(f["x-seq"], f.body.decode()) for f in got] == [("2", "one"), ("3", "three")]
    st, _, body = nodes[0].http("GET", "/metrics")
    text = body.decode()

    def total(name):
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))
    assert total("stampede_cluster_gaps_total") >= 1
    assert total("stampede_cluster_lost_total") == 0
    assert total("stampede_cluster_published_total") == 2
    assert total("stampede_cluster_received_total") == 3
    assert total("stampede_cluster_rooms_watched") == 1
    assert total("stampede_cluster_redis_down") == 0
    from test_metrics import promtool_check
    promtool_check(text)


def test_cluster_flags_are_checked(tmp_path):
    from conftest import stampede_bin
    for args, msg in [
        (["--cluster", "http://x:1"], "redis://"),
        (["--cluster", "redis://h"], "redis://HOST:PORT"),
        (["--cluster", "redis://127.0.0.1:1", "--persist", "false"], "needs the store"),
        (["--cluster", "redis://127.0.0.1:1", "--cluster-node", "a:b"], "--cluster-node"),
    ]:
        p = subprocess.run([str(stampede_bin()), "--listen", "127.0.0.1:0", "--stomp-listen", "off",
                            "--data-dir", str(tmp_path / "d"), *args],
                           capture_output=True, timeout=20)
        assert p.returncode != 0
        assert msg in p.stderr.decode(), p.stderr.decode()


def test_a_member_online_on_another_node_gets_no_push_and_is_pushed_once_away(
        redis, server_factory, fake_fcm_factory, key, tmp_path):  # noqa: F811
    from test_fake_fcm import FAKE_FCM
    if not FAKE_FCM.exists():
        pytest.skip("fake-fcm not built")
    from test_push import member_with_devices, push_args, pushes
    fake = fake_fcm_factory()
    nodes = [server_factory("--cluster", redis.url, "--cluster-node", f"p{i}", "--shards", "2",
                            *push_args(tmp_path, key, fake)) for i in range(2)]
    room = uid("push")
    # Membership lives in each node's store: the publishing node knows bob.
    member_with_devices(nodes[0], room, "bob", "tok-bob")
    bob = nodes[1].connected(login="bob")
    bob.subscribe(f"/topic/{room}")
    pub = nodes[0].connected(login="dave")
    pub.send(f"/topic/{room}", "while bob is on node 2", receipt=True)
    assert bob.expect_message().body == b"while bob is on node 2"
    assert pushes(fake, 1, timeout=1.5) == [], "bob is online on another node: no push"
    bob.unsubscribe()
    pub.send(f"/topic/{room}", "while away", receipt=True)
    got = pushes(fake, 1)
    assert [m["message"]["notification"]["body"] for m in got] == ["while away"]
    assert got[0]["message"]["data"]["seq"] == "2"


def test_a_node_watches_a_room_only_while_it_has_subscribers(cluster, redis):
    nodes = cluster(2)
    room = uid("room")

    def numsub():
        reply = redis.command("PUBSUB", "NUMSUB", f"room:{room}")
        return int(reply.rsplit(b":", 1)[1].split(b"\r\n")[0])

    assert numsub() == 0
    a = nodes[0].connected(login="a")
    a.subscribe(f"/topic/{room}", id="x")
    a.subscribe(f"/topic/{room}", id="y")
    b = nodes[1].connected(login="b")
    b.subscribe(f"/topic/{room}")
    assert numsub() == 2
    a.unsubscribe("x")
    assert numsub() == 2
    a.unsubscribe("y")
    deadline = time.time() + 5
    while numsub() != 1 and time.time() < deadline:
        time.sleep(0.05)
    assert numsub() == 1
    # Publishing needs no watch; watching again picks up where it stands.
    p = nodes[0].connected(login="p")
    p.send(f"/topic/{room}", "one", receipt=True)
    assert b.expect_message()["x-seq"] == "1"
    a.subscribe(f"/topic/{room}", id="z")
    p.send(f"/topic/{room}", "two", receipt=True)
    assert a.expect_message()["x-seq"] == "2"
    assert b.expect_message()["x-seq"] == "2"
    b.close()
    a.close()
    deadline = time.time() + 5
    while numsub() != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert numsub() == 0


def test_stomppy_clients_on_different_nodes_chat(cluster):
    import stomp
    nodes = cluster(3)
    room = uid("room")
    got = []
    done = threading.Event()

    class L(stomp.ConnectionListener):
        def on_message(self, frame):
            got.append((frame.headers["x-seq"], frame.body))
            if len(got) == 10:
                done.set()

    sub = stomp.Connection12([("127.0.0.1", nodes[2].stomp_port)])
    sub.set_listener("l", L())
    sub.connect("carol", "x", wait=True)
    sub.subscribe(f"/topic/{room}", id="1", headers={"receipt": "r1"})
    time.sleep(0.3)
    pubs = []
    for i in (0, 1):
        c = stomp.Connection12([("127.0.0.1", nodes[i].stomp_port)])
        c.connect(f"pub{i}", "x", wait=True)
        pubs.append(c)
    for k in range(10):
        pubs[k % 2].send(f"/topic/{room}", f"s{k}", headers={"receipt": f"p{k}"})
        time.sleep(0.02)
    assert done.wait(10), got
    assert [s for s, _ in got] == [str(k) for k in range(1, 11)]
    assert sorted(b for _, b in got) == sorted(f"s{k}" for k in range(10))
    for c in pubs + [sub]:
        c.disconnect()


def sneak_in(redis, room):
    """Sequence one more message of `room` in Redis behind the nodes' backs:
    into the stream (a copy of the first entry's fields), not the channel,
    as when a node's channel connection drops a message."""
    redis.command("EVAL",
                  "local e = redis.call('XRANGE', KEYS[2], '-', '+'); local f = e[1][2]; "
                  "local s = redis.call('HINCRBY', KEYS[1], 'seq', 1); "
                  "redis.call('XADD', KEYS[2], s .. '-1', f[1], f[2], f[3], f[4]); return s",
                  "2", f"stampede:{{{room}}}:meta", f"stampede:{{{room}}}:log")


def test_a_client_ahead_of_the_node_gets_nothing_twice(cluster, redis):
    """A client that saw seq 2 on a node that was ahead resumes on a node
    that has delivered only seq 1: it waits for the node to catch up
    instead of getting seq 2 again."""
    nodes = cluster(1)
    room = uid("room")
    w = nodes[0].connected(login="w")
    w.subscribe(f"/topic/{room}")
    p = nodes[0].connected(login="p")
    p.send(f"/topic/{room}", "one", receipt=True)
    assert w.expect_message()["x-seq"] == "1"
    sneak_in(redis, room)  # seq 2: in Redis, not yet on this node
    c = nodes[0].connected(login="c")
    c.subscribe(f"/topic/{room}", headers=[("x-since-seq", "2")])
    p.send(f"/topic/{room}", "three", receipt=True)
    got = c.expect_message()
    assert (got["x-seq"], got.body) == ("3", b"three")
    c.assert_silent(0.3, "duplicate")
    # The watcher got the repaired seq 2 before 3.
    assert [f["x-seq"] for f in w.messages(2)] == ["2", "3"]


def test_a_flushed_script_is_loaded_again_and_nothing_is_doubled(cluster, redis):
    nodes = cluster(1)
    room = uid("room")
    s = nodes[0].connected(login="s")
    s.subscribe(f"/topic/{room}")
    p = nodes[0].connected(login="p")
    p.send(f"/topic/{room}", "before", receipt=True)
    assert b"OK" in redis.command("SCRIPT", "FLUSH")
    for k in range(5):
        p.send(f"/topic/{room}", f"after{k}", receipt=(k == 4))
    got = [(f["x-seq"], f.body.decode()) for f in s.messages(6)]
    assert got == [("1", "before")] + [(str(k + 2), f"after{k}") for k in range(5)]
    s.assert_silent(0.3, "duplicate")


class SlowProxy:
    """A TCP proxy to Redis that holds every chunk from Redis for `delay` s
    (a remote or busy Redis)."""

    def __init__(self, port: int, delay: float):
        self.target = port
        self.delay = delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self.pipe, args=(c, u, 0.0), daemon=True).start()
            threading.Thread(target=self.pipe, args=(u, c, self.delay), daemon=True).start()

    def pipe(self, a, b, delay):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if delay:
                    time.sleep(delay)
                b.sendall(data)
        except OSError:
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.sock.close()


def test_a_slow_redis_still_lets_subscriptions_in(redis, server_factory):
    proxy = SlowProxy(redis.port, 0.03)
    try:
        node = server_factory("--cluster", f"redis://127.0.0.1:{proxy.port}", "--shards", "2")
        room = uid("room")
        s = node.connected(login="s")
        s.subscribe(f"/topic/{room}")          # its RECEIPT needs the SUBSCRIBE's reply
        s2 = node.connected(login="s2")
        s2.subscribe(f"/topic/{room}")
        p = node.connected(login="p")
        p.send(f"/topic/{room}", "hello", receipt=True)
        for c in (s, s2):
            assert c.expect_message().body == b"hello"
        assert "channels lost" not in node.stderr_text()
    finally:
        proxy.close()
