"""The fan-out loop's own Python cost per viewer, source trees compared, on stand-in sockets.

    python -m load_tests.bench_fanout_loop --server-dir /tmp/base --server-dir /tmp/cur

Each tree's `RoomFanout.write` (with its edge writer, when it has one) writes a frame to
2,000 stand-in connections whose transports take the bytes and do nothing: no syscall, no
network, so what is left is the loop the fan-out runs per viewer per room frame. Trees run
in separate processes (their metrics registries would clash), interleaved, CPU time of the
process (steadier than wall time on a shared machine), best of `--reps` per run. Prints a
JSON line per tree (median over `--runs`, ratio to the first tree), then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
viewers, writes, reps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
from websockets.protocol import State
from server.config import Config
from server.delivery.fanout import RoomFanout

class Transport:
    __slots__ = ()
    def get_write_buffer_size(self): return 0
    def write(self, data): pass
class Protocol:
    __slots__ = ("state", "extensions", "writes")
    def __init__(self): self.state, self.extensions, self.writes = State.OPEN, [], []
class Ws:
    __slots__ = ("transport", "protocol", "send_in_progress")
    def __init__(self): self.transport, self.protocol, self.send_in_progress = Transport(), Protocol(), None
class Peer:
    __slots__ = ("ws", "sink", "dropped", "closing")
    def __init__(self):
        self.ws = self.sink = Ws(); self.dropped = 0; self.closing = False

try:
    from server.edge.client import WsWriter
    fanout = RoomFanout(Config(port=0, http_port=0), WsWriter())
except ImportError:  # a tree from before the edge's writer
    fanout = RoomFanout(Config(port=0, http_port=0))
peers = [Peer() for _ in range(viewers)]
best = float("inf")
for _ in range(reps):
    t0 = time.process_time()
    for _ in range(writes):
        fanout.write(peers, b"x" * 200)
    best = min(best, (time.process_time() - t0) / (writes * viewers) * 1e9)
print(best)
"""


def run(tree: str, viewers: int, writes: int, reps: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, tree, str(viewers), str(writes), str(reps)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-dir", action="append", required=True, help="a source tree (repeat)")
    parser.add_argument("--viewers", type=int, default=2000)
    parser.add_argument("--writes", type=int, default=200, help="room frames per repetition")
    parser.add_argument("--reps", type=int, default=9, help="repetitions per run (the best counts)")
    parser.add_argument("--runs", type=int, default=7, help="interleaved runs per tree (the median counts)")
    args = parser.parse_args()
    results: dict[str, list[float]] = {tree: [] for tree in args.server_dir}
    for _ in range(args.runs):
        for tree in args.server_dir:
            results[tree].append(run(tree, args.viewers, args.writes, args.reps))
    first = statistics.median(results[args.server_dir[0]])
    rows = []
    for tree, runs in results.items():
        median = statistics.median(runs)
        record = {"tree": tree, "ns_per_viewer_write": round(median, 1), "ratio": round(median / first, 3)}
        print(json.dumps({**record, "runs": [round(r, 1) for r in runs], "viewers": args.viewers}))
        rows.append(record)
    print("\n| tree | CPU ns per viewer per frame (median) | ratio |\n|---|---|---|")
    for r in rows:
        print(f"| {r['tree']} | {r['ns_per_viewer_write']} | {r['ratio']} |")


if __name__ == "__main__":
    main()
