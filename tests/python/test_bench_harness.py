"""The load generator itself is tested: a short storm against a real server."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.environ.get("STAMPEDE_BENCH_BIN", os.path.join(ROOT, "target/release/stampede-bench"))


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
@pytest.mark.parametrize("ramp_up,workers", [("0.5", "1"), ("0", "2")])
def test_storm_counts_every_step_and_loses_nothing(server_factory, tmp_path, ramp_up, workers):
    srv = server_factory("--shards", "2")
    out = tmp_path / "storm.json"
    users = 300
    r = subprocess.run(
        [BENCH, "storm", "--url", srv.ws_url("/ws"), "--users", str(users), "--ramp-up", ramp_up,
         "--workers", workers, "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["users"] == users and doc["workers"] == int(workers)
    rows = {row["step"]: row for row in doc["steps"]["rows"]}
    assert list(rows) == ["ws_open", "connect", "subscribe", "disconnect", "flow"]
    for step, row in rows.items():
        assert row["count"] == users, (step, row)
        assert row["errors"] == 0, (step, row)
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"], (step, row)
    assert "| flow | 300 | 0 |" in r.stdout


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
def test_storm_reports_errors_by_kind_when_nothing_listens(tmp_path):
    out = tmp_path / "storm.json"
    # a port nothing listens on: every user fails at ws_open, counted by kind
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = subprocess.run(
        [BENCH, "storm", "--url", f"ws://127.0.0.1:{port}/ws", "--users", "20", "--ramp-up", "0",
         "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    rows = {row["step"]: row for row in json.loads(out.read_text())["steps"]["rows"]}
    assert rows["ws_open"]["errors"] == 20
    assert rows["ws_open"]["error_kinds"] == {"connect: connection refused": 20}
    assert rows["flow"]["errors"] == 20 and rows["flow"]["error_pct"] == 100.0
    assert rows["connect"]["count"] == 0


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
def test_hold_reports_sessions_and_server_memory(server_factory, tmp_path):
    srv = server_factory("--shards", "2")
    out = tmp_path / "hold.json"
    r = subprocess.run(
        [BENCH, "hold", "--url", srv.ws_url("/ws"), "--sessions", "400", "--ramp-up", "0.2",
         "--hold", "1", "--workers", "2", "--server-pid", str(srv.proc.pid), "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["established"] == 400 and doc["errors"] == {}
    assert doc["rss_after_kib"] > doc["rss_before_kib"] > 0
    # one idle subscribed session costs the server some hundreds of bytes to a
    # few KiB; far outside that means the measurement is broken
    assert 100 < doc["bytes_per_session"] < 64 * 1024, doc


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
def test_fanout_delivers_everything_in_order(server_factory, tmp_path):
    srv = server_factory("--shards", "2")
    out = tmp_path / "fanout.json"
    r = subprocess.run(
        [BENCH, "fanout", "--url", srv.ws_url("/ws"), "--rooms", "8", "--members", "10", "--publishers", "2",
         "--rate", "400", "--duration", "1", "--drain", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["sent"] > 300, doc
    # every message reaches every member of its room, in room order
    assert doc["expected"] == doc["sent"] * 10, doc
    assert doc["delivered"] == doc["expected"] and doc["lost"] == 0, doc
    assert doc["out_of_order"] == 0 and doc["subscribers_short"] == 0, doc
    assert 0 < doc["latency_ms"]["p50"] <= doc["latency_ms"]["p99"], doc


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
def test_fanout_over_worker_processes_as_fast_as_possible(server_factory, tmp_path):
    # The probe window paces publishers to what a probe member takes; when
    # the test machine starves a worker process its members can still fall
    # behind, and the default 1 MiB outbound limit would (rightly) drop
    # them. This test is about the harness, so give members room.
    srv = server_factory("--shards", "2", "--max-outbound-bytes", str(256 << 20))
    out = tmp_path / "fanout.json"
    r = subprocess.run(
        [BENCH, "fanout", "--url", srv.ws_url("/ws"), "--rooms", "6", "--members", "20", "--publishers", "3",
         "--rate", "0", "--duration", "1", "--drain", "10", "--workers", "3",
         "--server-pid", str(srv.proc.pid), "--label", "t", "--json", str(out)],
        capture_output=True, text=True, timeout=90,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["workers"] == 3 and doc["label"] == "t"
    assert doc["sent"] > 100, doc
    assert doc["delivered"] == doc["expected"] == doc["sent"] * 20, doc
    assert doc["lost"] == 0 and doc["out_of_order"] == 0 and doc["sessions_dropped"] == 0, doc
    # the run's cost: server CPU from /proc, generator CPU from getrusage
    assert doc["cost"]["server_cpu_s"] > 0 and doc["cost"]["generator_cpu_s"] > 0, doc


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
def test_fanout_reports_members_the_server_dropped(server_factory, tmp_path):
    # members that cannot keep up are dropped by the server (slow consumer);
    # the harness must count them as lost, with the server's reason
    srv = server_factory("--shards", "1", "--max-outbound-bytes", "65536", "--max-frame-size", "65536")
    out = tmp_path / "fanout.json"
    r = subprocess.run(
        [BENCH, "fanout", "--url", srv.ws_url("/ws"), "--rooms", "1", "--members", "4", "--publishers", "1",
         "--rate", "0", "--duration", "1", "--drain", "2", "--window", "100000", "--body-size", "4000",
         "--json", str(out)],
        capture_output=True, text=True, timeout=90,
    )
    doc = json.loads(out.read_text())
    assert r.returncode == 1, r.stdout + r.stderr
    assert doc["lost"] > 0 and doc["sessions_dropped"] > 0, doc
    assert any("slow consumer" in k for k in doc["drop_reasons"]), doc


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
def test_send_counts_every_receipt(server_factory, tmp_path):
    srv = server_factory("--shards", "2")
    out = tmp_path / "send.json"
    r = subprocess.run(
        [BENCH, "send", "--url", srv.ws_url("/ws"), "--publishers", "2", "--rooms", "5", "--window", "8",
         "--duration", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["sent"] > 100 and doc["receipted"] == doc["sent"] and doc["missing_receipts"] == 0, doc
    assert doc["errors"] == {}, doc
    assert 0 < doc["latency_ms"]["p50"] <= doc["latency_ms"]["p99"] <= doc["latency_ms"]["max"], doc


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
def test_send_reports_server_errors(server_factory, tmp_path):
    # a body over the frame limit: the server answers ERROR; the run fails and says why
    srv = server_factory("--shards", "1", "--max-frame-size", "2048", "--max-outbound-bytes", "65536")
    out = tmp_path / "send.json"
    r = subprocess.run(
        [BENCH, "send", "--url", srv.ws_url("/ws"), "--publishers", "1", "--body-size", "4096",
         "--duration", "0.5", "--drain", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["receipted"] == 0 and doc["missing_receipts"] == doc["sent"] > 0, doc
    assert any(k.startswith("ERROR frame:") for k in doc["errors"]), doc


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
def test_report_makes_tables_and_plots_from_real_runs(server_factory, tmp_path):
    # (outbound limit raised as in the fan-out test above: a starved worker
    # must not turn this report test into a slow-consumer test)
    srv = server_factory("--shards", "2", "--max-outbound-bytes", str(256 << 20))
    runs = tmp_path / "json"
    runs.mkdir()
    for users in ("50", "150"):
        r = subprocess.run(
            [BENCH, "storm", "--url", srv.ws_url("/ws"), "--users", users, "--ramp-up", "0.2",
             "--label", "stampede", "--server-pid", str(srv.proc.pid), "--json", str(runs / f"storm-{users}.json")],
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "server CPU per user flow" in r.stdout
    r = subprocess.run(
        [BENCH, "fanout", "--url", srv.ws_url("/ws"), "--rooms", "2", "--members", "5", "--rate", "0",
         "--duration", "0.5", "--label", "stampede", "--json", str(runs / "fanout.json")],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([BENCH, "report", "--dir", str(runs), "--plots", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "| stampede | 0.2 | 50 | 0 | 0.00 |" in r.stdout, r.stdout
    assert "| stampede | 0.2 | 150 | 0 | 0.00 |" in r.stdout, r.stdout
    assert "| stampede | 2 x 5 | max |" in r.stdout, r.stdout
    for png in ("storm-avg.png", "storm-p99.png", "storm-errors.png", "fanout.png"):
        data = (tmp_path / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, png


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
def test_fanout_records_a_target_that_cannot_hold_the_members(server_factory, tmp_path):
    # a server that takes 10 connections: the run fails, and says so in its JSON
    srv = server_factory("--shards", "1", "--max-connections", "10")
    out = tmp_path / "fanout.json"
    r = subprocess.run(
        [BENCH, "fanout", "--url", srv.ws_url("/ws"), "--rooms", "2", "--members", "10", "--duration", "0.5",
         "--step-timeout", "3", "--label", "small", "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["failed"].startswith("10 of 20 members subscribed"), doc
    assert doc["subscribed"] == 10 and sum(doc["subscribe_errors"].values()) == 10, doc
    rep = subprocess.run([BENCH, "report", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0, rep.stderr
    assert "| small | 2 x 10 | 1000 | failed: 10 of 20 members subscribed" in rep.stdout, rep.stdout
