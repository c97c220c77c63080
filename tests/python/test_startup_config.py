"""Start-up line and configuration sources (flags, STAMPEDE_<NAME> env vars, --config TOML)."""

from __future__ import annotations

import time

import pytest

from conftest import READY_RE
from stampede_client import uid


def test_ready_line_is_the_only_stdout_line(server):
    c = server.connected("tcp")
    w = server.connected("ws")
    room = uid()
    c.subscribe(f"/topic/{room}")
    w.send(f"/topic/{room}", "x", receipt=True)
    c.expect_message()
    w.send_frame("FROB", [])
    w.expect_error("unknown command")
    time.sleep(0.3)
    assert len(server.stdout_lines) == 1, f"stdout must hold only the ready line: {server.stdout_lines!r}"
    m = READY_RE.match(server.stdout_lines[0])
    assert m and m.group(1) == "127.0.0.1"
    assert server.stdout_lines[0] == f"stampede ready http=127.0.0.1:{server.http_port} stomp=127.0.0.1:{server.stomp_port}"


def test_stomp_listen_off(server_factory):
    srv = server_factory(stomp_listen="off")
    assert srv.stdout_lines[0] == f"stampede ready http=127.0.0.1:{srv.http_port} stomp=off"
    assert srv.stomp_port is None
    c = srv.connected("ws")
    c.ping_roundtrip(f"/topic/{uid()}")


def test_flags_from_environment(server_factory):
    srv = server_factory(env={"STAMPEDE_HEARTBEAT_SEND_MS": "1111", "STAMPEDE_HEARTBEAT_RECEIVE_MS": "2222",
                              "STAMPEDE_MAX_SUBSCRIPTIONS": "1"})
    c = srv.tcp()
    assert c.connect()["heart-beat"] == "1111,2222"
    c.subscribe("/topic/a", "s1")
    c.send_frame("SUBSCRIBE", [("destination", "/topic/b"), ("id", "s2"), ("receipt", "r")])
    c.expect_error("too many subscriptions", receipt_id="r")


def test_flags_from_toml_config(server_factory, tmp_path):
    cfg = tmp_path / "stampede.toml"
    cfg.write_text("heartbeat_send_ms = 3333\nheartbeat_receive_ms = 4444\nmax_subscriptions = 1\n")
    srv = server_factory("--config", str(cfg))
    c = srv.tcp()
    assert c.connect()["heart-beat"] == "3333,4444"
    c.subscribe("/topic/a", "s1")
    c.send_frame("SUBSCRIBE", [("destination", "/topic/b"), ("id", "s2"), ("receipt", "r")])
    c.expect_error("too many subscriptions", receipt_id="r")


@pytest.mark.parametrize("shards", [1, 3, 4])
def test_shard_count(server_factory, shards):
    srv = server_factory("--shards", str(shards))
    seen = set()
    for i in range(30):
        c = srv.connected("tcp" if i % 2 else "ws")
        seen.add(c.shard)
        c.close()
    assert seen <= set(range(shards)), f"session shard indexes {seen} outside 0..{shards - 1}"
    if shards > 1:
        assert len(seen) >= 2
