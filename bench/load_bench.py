"""Loading a llava-hf directory: ours (`infer.loading.load_model`, device arrays) against transformers'
`LlavaForConditionalGeneration.from_pretrained(dtype=bfloat16)`, each load in its own fresh process.

    python bench/load_bench.py DIR [--repeats 5] [--threads 2]

DIR: e.g. the LLaVA-1.5-7B-shaped directory bench/real_shape_build.py writes. Rounds alternate ours,
transformers, ours, ... after one untimed warm-up round of each (page cache warm as far as memory allows).
Each process reports the load's seconds (imports excluded), its peak resident memory (VmHWM), the growth of
the peak over the resident size before the load, and its anonymous / file-backed resident memory at the end
(transformers keeps bf16 tensors as views of the mapped file, so much of its resident memory is page cache;
ours is a copy in device buffers, which on CPU are host memory). Prints one JSON report: per side the median
and min-max of each figure, and the ratios of ours to transformers'.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = r"""
import json, os, sys, time
sys.path.insert(0, os.path.join(sys.argv[2], "bench"))
import harness
harness.pin_threads(int(sys.argv[3]))
def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))
"""

OURS = PRELUDE + r"""
import jax
from xllava_jax.infer.loading import load_model
jax.numpy.zeros(1).block_until_ready()
before, start = status("VmRSS"), time.perf_counter()
model, params = load_model(sys.argv[1])
jax.block_until_ready(params)
seconds = time.perf_counter() - start
weights = sum(x.nbytes for x in jax.tree.leaves(params))
"""

TRANSFORMERS = PRELUDE + r"""
import torch, transformers
before, start = status("VmRSS"), time.perf_counter()
model = transformers.LlavaForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
seconds = time.perf_counter() - start
weights = sum(p.numel() * p.element_size() for p in model.parameters())
"""

REPORT = r"""
print(json.dumps({"seconds": seconds, "peak": status("VmHWM"), "growth": status("VmHWM") - before,
                  "anon": status("RssAnon"), "file": status("RssFile"), "weights": weights}))
"""

SIDES = {"ours": OURS + REPORT, "transformers": TRANSFORMERS + REPORT}


def run_side(name: str, directory: str, threads: int) -> dict:
    """One load in a fresh process; its report."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", SIDES[name], directory, ROOT, str(threads)], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{name} load failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="CPUs per process (0: all this process may use)")
    a = p.parse_args()
    threads = harness.pin_threads(a.threads or None)
    load_before = harness.loadavg()
    for name in SIDES:
        run_side(name, a.dir, threads)  # warm-up: page cache, compiled kernels on disk
    rows = {name: [] for name in SIDES}
    for _ in range(a.repeats):
        for name in SIDES:
            rows[name].append(run_side(name, a.dir, threads))
    report = {"dir": a.dir, "threads": threads, "repeats": a.repeats, "loadavg": [load_before, harness.loadavg()],
              "weights_gb": rows["ours"][0]["weights"] / 1e9}
    for name, runs in rows.items():
        report[name] = {k: harness.summary([r[k] / (1 if k == "seconds" else 1e9) for r in runs])
                        for k in ("seconds", "peak", "growth", "anon", "file")}
        report[name]["growth_over_weights"] = harness.summary([r["growth"] / r["weights"] for r in runs])
    med = lambda side, k: report[side][k]["median"]  # noqa: E731
    report["ratio_seconds"] = med("ours", "seconds") / med("transformers", "seconds")
    report["ratio_peak"] = med("ours", "peak") / med("transformers", "peak")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
