"""Power-cut safety: a writer process SIGKILLed at random moments, then the store reopened.

Every message whose enqueue returned (the writer prints its seq after the
commit) must be there afterwards, every ack that returned must stick, and the
paired writes (begin + StartTransaction, stop_queued + StopTransaction) must be
all-or-nothing (field-notes §6: orphaned or twice-stopped transactions).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from chargepoint.store import Store

WRITER = Path(__file__).with_name("crash_writer.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_and_kill(state_dir: Path, seed: int, rng: random.Random) -> list[list[str]]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(WRITER), str(state_dir), str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    lines: list[list[str]] = []
    try:
        target = rng.randint(3, 120)
        deadline = time.monotonic() + 30.0
        while len(lines) < target and time.monotonic() < deadline:
            raw = proc.stdout.readline()
            if not raw:
                break
            lines.append(raw.decode().split())
        time.sleep(rng.random() * 0.02)  # land somewhere inside a later commit
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # Read the rest through the same buffered reader: readline() may already hold lines read
    # ahead, which communicate() (raw os.read on the descriptor) would silently skip.
    rest = proc.stdout.read()
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    complete = rest.decode().split("\n")[:-1]  # a line cut off by the kill is not complete
    lines.extend(line.split() for line in complete)
    assert lines, err.decode()[-2000:]
    return lines


def test_sigkilled_writer_loses_nothing_that_was_committed(tmp_path: Path) -> None:
    rng = random.Random()
    seed0 = rng.randrange(1_000_000)
    state = tmp_path / "state"
    enqueued: dict[int, tuple[str, int]] = {}
    acked: set[int] = set()
    acking: set[int] = set()  # ack started; whether it committed before the kill is unknown
    for round_no in range(4):
        for line in _run_and_kill(state, seed0 + round_no, rng):
            if line[0] == "a":
                acking.add(int(line[1]))
            elif line[0] == "A":
                acked.add(int(line[1]))
            else:
                enqueued[int(line[2])] = (line[0], int(line[1]))

        with Store(state) as s:
            context = f"seed {seed0} round {round_no}"
            assert s.recovered_from is None, context
            conn = s.connection
            assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok", context
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == [], context
            queue = {m.seq: m for m in s.queue.items()}
            assert list(queue) == sorted(queue)
            missing = [seq for seq in enqueued if seq not in acking and seq not in queue]
            assert missing == [], f"{context}: committed messages lost: {missing}"
            assert not acked & set(queue), f"{context}: acked messages came back"
            for tx in s.transactions.recent(100_000):
                rows = [m for m in queue.values() if m.local_tx_id == tx.local_id]
                starts = [m for m in rows if m.kind == "start"]
                stops = [m for m in rows if m.kind == "stop"]
                # begin + StartTransaction were one commit; stop_queued + StopTransaction too.
                assert len(starts) == 1 and starts[0].payload == {"lid": tx.local_id}, context
                assert len(stops) == (1 if tx.stop_queued else 0), context
            tx_ids = {tx.local_id for tx in s.transactions.recent(100_000)}
            assert {m.local_tx_id for m in queue.values()} <= tx_ids
