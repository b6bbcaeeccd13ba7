"""What every benchmark here shares, so that its numbers tell the truth.

- `pin_threads(n)`: this process runs on `n` CPUs (default: all it may use), set before the first jax
  computation. XLA's CPU thread pool sizes itself from the process's CPU affinity (the `taskset` mask), and
  torch gets `torch.set_num_threads(n)`: both sides use the same number of threads.
- `interleave(fns, repeats, warmup)`: runs the callables in turn, A, B, A, B, ... (after `warmup` untimed
  rounds), so load that comes and goes hits both sides alike; returns every time of every side.
- `summary(times)`: median and min-max, the only figures a report should quote.
- The 1-min load average is printed before and after each comparison, and a comparison during which it moved
  by more than `LOAD_CHANGE_FLAG` is flagged (`"load_changed": true` and a warning on stderr): its times are
  not comparable with an idle machine's.

Run each benchmark from the repository root; see bench/README.md for the measured numbers.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import Callable, Mapping

LOAD_CHANGE_FLAG = 0.5  # 1-min load average change (runnable processes) that marks a comparison unreliable
_PINNED: dict = {}


def pin_threads(threads: int | None = None) -> int:
    """Run this process on `threads` CPUs (default: every CPU it may use) and give torch as many threads.
    Call before the first jax computation (XLA's CPU client sizes its thread pool from the affinity mask
    when it starts). Returns the thread count."""
    allowed = sorted(os.sched_getaffinity(0))
    n = min(threads or len(allowed), len(allowed))
    os.sched_setaffinity(0, allowed[:n])
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass
    _PINNED.update(threads=n, cpus=allowed[:n])
    return n


def loadavg() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def timed(fn: Callable[[], object]) -> float:
    """Seconds of one call (the callable blocks until its work is done)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(fns: Mapping[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
               label: str = "") -> dict:
    """Time each callable `repeats` times, in turn (A, B, A, B, ...), after `warmup` untimed rounds.

    Returns {"times": {name: [seconds]}, "load": {"before", "after", "changed"}}; prints the load average
    before and after, and a warning when it changed by more than LOAD_CHANGE_FLAG."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: at least one timed repeat")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    before = loadavg()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    after = loadavg()
    changed = abs(after - before) > LOAD_CHANGE_FLAG
    tag = f"[{label}] " if label else ""
    print(f"{tag}1-min load average: {before:.2f} before, {after:.2f} after ({len(fns)} sides x {repeats} repeats "
          f"interleaved, {warmup} warm-up)", file=sys.stderr, flush=True)
    if changed:
        print(f"{tag}WARNING: the 1-min load changed by {after - before:+.2f} (> {LOAD_CHANGE_FLAG}) during this "
              "comparison: the machine was not quiet; do not quote these times as an idle machine's",
              file=sys.stderr, flush=True)
    return {"times": times, "load": {"before": round(before, 2), "after": round(after, 2), "changed": changed}}


def summary(values: list[float], digits: int = 4) -> dict:
    """Median and min-max (and the count) of repeated measurements."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def compare(ours: Callable[[], object], peer: Callable[[], object], repeats: int = 5, warmup: int = 1,
            label: str = "") -> dict:
    """Seconds per call of ours vs a peer, interleaved: {"ours_s", "peer_s" (summaries), "peer_over_ours"
    (ratio of medians: > 1 means ours is faster), "load"}."""
    run = interleave({"ours": ours, "peer": peer}, repeats, warmup, label)
    t = run["times"]
    return {"ours_s": summary(t["ours"]), "peer_s": summary(t["peer"]),
            "peer_over_ours": round(statistics.median(t["peer"]) / statistics.median(t["ours"]), 3),
            "load": run["load"]}


def environment() -> dict:
    """Where a benchmark ran (the head of every report): device, CPUs and threads, versions, load average."""
    import jax
    env = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "threads": _PINNED.get("threads"),
           "cpus": _PINNED.get("cpus"), "cpu": platform.processor() or platform.machine(),
           "python": platform.python_version(), "jax": jax.__version__,
           "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        import torch
        env.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return env
