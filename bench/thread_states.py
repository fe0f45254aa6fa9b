"""What a running process's busiest threads are doing: running/runnable, or asleep and on what.

Reads Linux `/proc/PID/task/*/{stat,wchan}`. It first takes each thread's CPU over one second and
keeps the busiest few, then samples their state every few milliseconds. Point it at `afv serve` (or
the server `bench/loadtest.py` starts) while a load runs: a model thread that is asleep on a futex
while its core idles is waiting for a lock (the GIL or another), not for work.

    .venv/bin/python bench/loadtest.py --concurrency 32 --duration 40 &
    sleep 45; .venv/bin/python bench/thread_states.py $(pgrep -f model_workers | head -1)
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path


def family(pid: int) -> list[int]:
    """`pid` and its descendants (the server's forked model processes), from /proc's parent ids."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [pid], [pid]
    while todo:
        this = todo.pop()
        kids = [child for child, parent in parents.items() if parent == this]
        found += kids
        todo += kids
    return found


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of `pid` (and of its descendant processes), by thread id
    (`bench/loadtest.py` reports them too)."""
    out = {}
    for proc in family(pid):
        try:
            tasks = list(Path(f"/proc/{proc}/task").iterdir())
        except OSError:  # the process ended
            continue
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended
                continue
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def busiest(pid: int, top: int, seconds: float = 1.0) -> list[tuple[int, float]]:
    """The `top` threads with the most CPU over `seconds`: (thread id, cores busy)."""
    before = thread_cpu(pid)
    time.sleep(seconds)
    after = thread_cpu(pid)
    cores = {tid: (cpu - before.get(tid, 0.0)) / seconds for tid, cpu in after.items()}
    return sorted(cores.items(), key=lambda kv: -kv[1])[:top]


def sample(pid: int, tids: list[int], seconds: float, every: float) -> dict[int, collections.Counter]:
    """Per thread, how often it was seen in each state (R, S, D, …) and, when not running, its wchan."""
    seen: dict[int, collections.Counter] = {tid: collections.Counter() for tid in tids}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for tid in tids:
            try:
                state = Path(f"/proc/{tid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = Path(f"/proc/{tid}/task/{tid}/wchan").read_text().strip() if state != "R" else ""
            except OSError:
                continue
            seen[tid][state if state == "R" else f"{state}:{wchan or '?'}"] += 1
        time.sleep(every)
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pid", type=int)
    ap.add_argument("--top", type=int, default=4, help="how many of the busiest threads to follow")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=0.003, help="seconds between samples")
    args = ap.parse_args()
    threads = busiest(args.pid, args.top)
    seen = sample(args.pid, [tid for tid, _ in threads], args.seconds, args.every)
    for tid, cores in threads:
        total = max(1, sum(seen[tid].values()))
        shares = ", ".join(f"{state} {n / total:.1%}" for state, n in seen[tid].most_common(4))
        label = "main" if tid == args.pid else str(tid)
        print(f"thread {label:>8} ({cores:.2f} cores): {shares}")


if __name__ == "__main__":
    main()
