"""The load tools work: every bench scenario at tiny scale, and the Locust users, against real servers.

No timing is asserted (the machine is shared and slow); what is checked is that a
run completes, reports every field, loses nothing, and that Locust saw answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from load_tests import bench
from tests.nginx_fixtures import requires_nginx

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 120  # seconds: a hang fails the test instead of the whole session


@pytest.fixture(scope="module")
def server() -> Iterator[bench.ServerProcess]:
    """One server process for the scenarios that take --url (the bench's own env profile)."""
    proc = bench.start_server(tick_ms=20, extra=[])
    try:
        yield proc
    finally:
        proc.stop()


def run_bench(*args: str) -> list[dict[str, Any]]:
    """Run `python -m load_tests.bench ...`; return its JSON lines (the table follows them)."""
    out = subprocess.run(
        [sys.executable, "-m", "load_tests.bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert records, out.stdout
    assert "| run |" in out.stdout  # the Markdown table
    return records


def against(server: bench.ServerProcess) -> list[str]:
    return ["--url", f"ws://127.0.0.1:{server.port}/ws", "--server-pid", str(server.proc.pid)]


def assert_percentiles(block: dict[str, Any]) -> None:
    assert set(block) == {"p50", "p90", "p99", "max"}
    assert all(isinstance(block[k], float | int) for k in block), block
    assert block["p50"] <= block["p90"] <= block["p99"] <= block["max"]


def test_fanout_self_started_server_two_workers() -> None:
    (rec,) = run_bench(
        "fanout", "--viewers", "12", "--rate", "40", "--duration", "1", "--drain", "30",
        "--sample", "3", "--workers", "2", "--tick-ms", "20",
    )  # fmt: skip
    assert rec["scenario"] == "fanout" and rec["server"]["self_started"] is True
    assert rec["failures"] == 0 and rec["publish_errors"] == 0
    assert rec["sent"] == 40 and rec["expected"] == 12 * 40
    assert rec["received"] == rec["expected"] and rec["loss"] == 0 and rec["excess"] == 0
    assert rec["dropped_frames"] == 0
    assert rec["latency_samples"] == 3 * 40
    assert_percentiles(rec["e2e_ms"])
    assert rec["delivered_per_s"] > 0
    assert rec["server_cpu_s"] is not None and rec["server_rss_per_conn_kib"] is not None
    assert rec["client_cpu_s"] > 0 and set(rec["tcp"]) <= {"ListenOverflows", "TCPSynRetrans"}


def test_join_repeat_sweep_and_plot(server: bench.ServerProcess, tmp_path: Path) -> None:
    png = tmp_path / "join.png"
    records = run_bench(
        "join", *against(server), "--clients", "10", "--sweep", "100,200", "--repeat", "2",
        "--workers", "1", "--plot", str(png),
    )  # fmt: skip
    # per sweep value: two runs, then their median
    assert [r["run"] for r in records] == [0, 1, "median", 0, 1, "median"]
    assert [r["rate"] for r in records] == [100, 100, 100, 200, 200, 200]
    for rec in records:
        assert rec["joined"] == 10 and rec["failures"] == 0
        assert_percentiles(rec["join_ms"])
    assert records[2]["runs"] == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_likes(server: bench.ServerProcess) -> None:
    (rec,) = run_bench(
        "likes", *against(server), "--likers", "4", "--rate", "50", "--burst", "5",
        "--duration", "1", "--drain", "30", "--workers", "1",
    )  # fmt: skip
    assert rec["sent"] == 50 and rec["observed"] == 50 and rec["loss"] == 0
    assert_percentiles(rec["rtt_ms"])
    assert rec["likes_per_s"] > 0 and rec["failures"] == 0


def test_dm(server: bench.ServerProcess) -> None:
    (rec,) = run_bench(
        "dm", *against(server), "--pairs", "3", "--rate", "30", "--duration", "1", "--drain", "30",
        "--workers", "1",
    )  # fmt: skip
    assert rec["sent"] == 30 and rec["acked"] == 30 and rec["delivered"] == 30
    assert rec["live"] == 30 and rec["loss"] == 0 and rec["dm_errors"] == 0
    assert_percentiles(rec["ack_ms"])
    assert_percentiles(rec["delivery_ms"])


def test_idle(server: bench.ServerProcess) -> None:
    (rec,) = run_bench("idle", *against(server), "--connections", "30", "--settle", "0", "--workers", "2")
    assert rec["joined"] == 30 and rec["alive"] == 30 and rec["failures"] == 0
    assert rec["server_rss_kib"] > 0 and rec["server_rss_per_conn_kib"] is not None


def test_locust_headless(server: bench.ServerProcess, tmp_path: Path) -> None:
    one_each = [{"user_class_name": n, "fixed_count": 1} for n in ("Viewer", "Chatter", "Liker", "DMer")]
    out = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(ROOT / "load_tests" / "locustfile.py"),
            # --each-once: the run ends when every user's round trips are answered, however slow
            # the machine; -t only bounds a hang (it would leave counts at 0 and fail below)
            "--headless", "-u", "4", "-r", "4", "-t", "100s", "--each-once", "--only-summary",
            "--loglevel", "WARNING",
            # the JSON file is written from the final stats at shutdown; the CSV is rewritten
            # once a second by a greenlet, so on a loaded machine it could miss the run's
            # requests (it once read 0)
            "--host", f"ws://127.0.0.1:{server.port}", "--json-file", str(tmp_path / "loc"),
            "--config-users", json.dumps(one_each),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**os.environ, "LIVEROOM_SECRET": bench.DEFAULT_SECRET},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    entries = json.loads((tmp_path / "loc.json").read_text())
    counts = {(e["method"], e["name"]): e["num_requests"] for e in entries}
    assert sum(e["num_failures"] for e in entries) == 0, entries
    assert counts[("WS", "join")] == 4
    assert counts[("WS", "ping")] >= 4  # every user's, answered
    for name in ("danmaku", "like", "dm"):  # each kind of round trip was answered
        assert counts[("WS", name)] >= 1, name
    assert counts[("RECV", "danmaku")] >= 1


def test_helpers() -> None:
    assert bench.percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}
    assert bench.percentiles([float(i) for i in range(1, 101)]) == {
        "p50": 50.0,
        "p90": 90.0,
        "p99": 99.0,
        "max": 100.0,
    }
    for n in (0, 25, 26, 1_763_900_000_000_000):
        assert bench.from_letters(bench.letters(n)) == n and bench.letters(n).isalpha()
    merged = bench.median_record(
        [{"a": 1, "b": {"c": 3.0}, "s": "x"}, {"a": 5, "b": {"c": 1.0}, "s": "y"}] * 2
    )
    assert merged["a"] == 3 and merged["b"]["c"] == 2.0 and merged["s"] == "x" and merged["runs"] == 4
    assert bench.parse_url("ws://127.0.0.1:9/ws") == ("127.0.0.1", 9)
    with pytest.raises(SystemExit):
        bench.parse_url("ws://10.0.0.1:9/ws")


def test_the_fanout_loop_bench_reports_every_tree() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "load_tests.bench_fanout_loop",
            *("--server-dir", str(ROOT)),
            *("--viewers", "20", "--writes", "5", "--reps", "1", "--runs", "1"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    (record,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert record["tree"] == str(ROOT) and record["ratio"] == 1.0 and record["ns_per_viewer_write"] > 0


def test_the_encoder_bench_measures_both_codecs_and_both_ingests() -> None:
    """bench_encoders --quick: every side measured (frames decoded, stamps read), one summary."""
    out = subprocess.run(
        [sys.executable, "-m", "load_tests.bench_encoders", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=4 * RUN_TIMEOUT,  # four servers one after the other (two of them with nginx-rtmp)
        check=True,
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    summary = records[-1]
    assert summary["bench"] == "encoders" and "| measure" in out.stdout
    for codec in ("VP8", "H264"):
        assert summary["cpu_pct_per_viewer"][codec]["1"] is not None
        assert summary["viewer_fps"][codec] > 0  # the tapped viewer got the codec's frames
        assert summary["ttff_ms_p50"][codec] > 0  # a joiner decoded a frame
    for path in ("whip", "rtmp"):
        ingest = summary["ingest"][path]
        assert ingest["fps"] > 0 and ingest["latency_ms_p50"] is not None  # stamps read back
        assert 0 <= ingest["latency_ms_p50"] <= ingest["latency_ms_p95"]
    assert summary["ingest_added_latency_ms"] is not None


@requires_nginx
def test_the_hls_cache_bench_with_a_real_chromium_viewer() -> None:
    """bench_hls_cache --browsers: simulated viewers and a real Chromium page through nginx, one level."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "load_tests.bench_hls_cache"),
            *("--levels", "3", "--runs", "1", "--warmup", "1", "--seconds", "3", "--browsers", "1"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2 * RUN_TIMEOUT,  # a node, nginx and Chromium, one after the other
        check=True,
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    (row,) = [r for r in records if "run" in r]
    assert row["viewers"] == 3 and row["origin_rps"] > 0 and row["viewer_parts_per_s"] > 0
    assert 0 < row["origin_parts_per_s"] < row["origin_rps"]  # parts and the reloads for them
    # the bare generator's viewers answered requests; its CPU and everyone's are reported
    assert row["generator"] == "raw" and row["clients_requests_per_s"] > 0
    assert set(row["cpu_pct_by"]) == {"node", "nginx", "workers", "bench", "browsers", "machine"}
    (page,) = row["browsers"]
    assert page["frames"] > 0 and page["seconds"] > 0  # the page kept presenting frames in the window
    assert page["decoded"] > 0 and 0 <= page["dropped"] <= page["decoded"]  # the media pipeline counted too
    assert page["latency_p50_ms"] is not None  # the page's PROGRAM-DATE-TIME figure
    assert page["waiting"] >= 0 and page["stalled_ms"] >= 0 and page["restarts"] >= 0
    (level,) = records[-1]["summary"]
    assert level["browser_frames_pct_worst"] > 0 and "browser_restarts" in level
    assert (
        "browsers' frames % presented / received (worst)" in out.stdout
    )  # the Markdown table has the browsers' columns


def test_the_hls_dates_bench_reads_the_drawn_clock_of_every_frame_it_dates() -> None:
    """bench_hls_dates: follows the demo room's live edge, decodes each part and dates each frame."""
    out = subprocess.run(
        [sys.executable, "-m", "load_tests.bench_hls_dates", "--seconds", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    (summary,) = [json.loads(line)["summary"] for line in out.stdout.splitlines() if line.startswith("{")]
    assert summary["parts"] > 0 and summary["frames"] > 0  # parts followed, frames read and dated
    p5, p50, p95 = (summary[f"date_minus_capture_p{q}_ms"] for q in (5, 50, 95))
    assert p5 <= p50 <= p95
    assert summary["announced_after_first_frame_p50_ms"] >= summary["announced_after_last_frame_p50_ms"]
    assert "PDT date - capture" in out.stdout  # the Markdown table


def test_the_live_notice_bench_tells_every_follower_on_both_nodes() -> None:
    """bench_live_notice at tiny scale (a real redis-server, 2 nodes, a WHIP host): every
    follower got its notice, and the latency is measured from the `live` event."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "load_tests.bench_live_notice",
            "--followers",
            "40",
            "--rooms",
            "4",
            "--runs",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2 * RUN_TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (record,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert record["missing_total"] == 0 and record["nodes"] == 2 and "| run |" in out.stdout
    (run,) = record["runs"]
    assert run["notices"] == 40 and run["live_event_after_whip_post_ms"] is not None
    assert_percentiles(run["live_to_notice_ms"])
    for node in ("n0", "n1"):  # followers on the host's node and on the other one
        assert_percentiles(run["by_follower_node"][node])


def test_the_resync_bench_checks_every_frame_against_a_join_snapshot() -> None:
    """bench_resync at tiny scale: every member's in-band frame decodes to its join snapshot
    plus the marker (the bench asserts it), and both costs are measured."""
    out = subprocess.run(
        [sys.executable, "-m", "load_tests.bench_resync", "--members", "60", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (record,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert record["members"] == 60 and record["resync_ms"] > 0 and record["snapshots_ms"] > 0
    assert record["frame_bytes"] > 0 and "us/member" in out.stdout
