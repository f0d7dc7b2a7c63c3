"""bench.serve_threads reads per-thread scheduler figures from /proc and reports the busiest threads' deltas."""

import os
import threading

from bench.serve_threads import _snapshot, _threads


def test_snapshot_reads_every_thread_and_deltas_rank_the_busiest():
    pid = os.getpid()
    before = _snapshot(pid)
    done = threading.Event()

    def spin():
        x = 0
        while not done.is_set():
            x += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        done.wait(0.3)
        after = _snapshot(pid)
    finally:
        done.set()
        t.join()
    assert pid in before and t.native_id not in before and t.native_id in after
    rows = _threads(before, after, pid)
    assert len(rows) <= 4 and rows == sorted(rows, key=lambda r: -r["cpu_s"])
    assert any(r["tid"] == t.native_id and r["cpu_s"] > 0 for r in rows)  # the new thread counts from zero
    assert all(r["switches"] >= 0 and r["runqueue_wait_s"] >= 0 for r in rows)
    assert [r["main"] for r in rows].count(True) <= 1
