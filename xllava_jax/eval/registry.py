"""Every benchmark by name: the core readers (benchmarks.py), the official layouts (official.py), the judged ones (review.py)."""

from __future__ import annotations

import os

from xllava_jax.eval import official, review
from xllava_jax.eval.benchmarks import CORE_BENCHMARKS, Benchmark, read_records

BENCHMARKS: dict[str, Benchmark] = {**CORE_BENCHMARKS, **official.BENCHMARKS, **review.BENCHMARKS}


def load_benchmark_records(benchmark: str | Benchmark, path: str | os.PathLike) -> list[dict]:
    """A benchmark's records from `path`: its official layout when it has a loader, else read_records."""
    bench = get_benchmark(benchmark)
    return bench.load(os.fspath(path)) if bench.load else read_records(path)


def get_benchmark(name: str | Benchmark) -> Benchmark:
    """The benchmark called `name` (a Benchmark passes through)."""
    if isinstance(name, Benchmark):
        return name
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]
