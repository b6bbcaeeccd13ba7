"""bf16 matrix-vector products on the CPU (benchmark, not a test): the operation that bounds batch-1 decode.

A decode step multiplies one row by every weight matrix, so its time is the weight bytes over the bandwidth at
which the matmul reads them. This times LLaMA-2-7B's MLP shape (4096 x 11008, bf16 weights, `--layers` stacked
as in our layer loop) four ways, interleaved on the same pinned threads (bench/harness.py): XLA's dot of the
bf16 operands (float32 accumulation, as our dense layers ask), the same after an explicit float32 conversion, our
CPU matvec kernel reading each layer of the stack in place (xllava_jax/models/cpu_kernels.py, what decode runs),
and torch's bf16 `linear` (oneDNN). It prints GB/s of weights read per side and a NumPy copy's bandwidth for scale.

    python bench/bf16_matvec_bench.py [--layers 4] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


def main() -> None:
    """Time the three matvecs and print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    harness.pin_threads(args.threads)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    k, n = 4096, 11008
    w = jax.random.normal(jax.random.PRNGKey(0), (args.layers, k, n), jnp.bfloat16) * 0.02
    x = jnp.ones((1, k), jnp.bfloat16)
    weight_bytes = w.size * 2

    def layer_loop(matvec):
        return jax.jit(lambda x, w: jax.lax.scan(lambda c, wl: (c, matvec(x, wl)), 0, w)[1])

    xla_bf16 = layer_loop(lambda x, wl: jnp.dot(x, wl, preferred_element_type=jnp.float32))
    xla_f32 = layer_loop(lambda x, wl: jnp.dot(x.astype(jnp.float32), wl.astype(jnp.float32)))
    from xllava_jax.models import cpu_kernels
    assert cpu_kernels.available(), "the CPU matvec kernel did not build (see the log)"
    kernel = jax.jit(lambda x, w: jax.lax.map(lambda i: cpu_kernels.matvec(x, w, i), jnp.arange(w.shape[0])))
    wt = torch.from_numpy(np.asarray(jnp.swapaxes(w, 1, 2).astype(jnp.float32))).to(torch.bfloat16)  # [L, out, in]
    xt = torch.ones(1, k, dtype=torch.bfloat16)

    def torch_linear():
        with torch.no_grad():
            for i in range(args.layers):
                torch.nn.functional.linear(xt, wt[i])

    fns = {"xla_bf16_dot": lambda: xla_bf16(x, w).block_until_ready(),
           "xla_f32_after_convert": lambda: xla_f32(x, w).block_until_ready(),
           "cpu_matvec_kernel": lambda: kernel(x, w).block_until_ready(), "torch_bf16_linear": torch_linear}
    run = harness.interleave(fns, args.repeats, warmup=1, label="bf16 matvec")
    a = np.ones(int(1e9) // 8)
    b = np.empty_like(a)
    copy_s = min(harness.timed(lambda: np.copyto(b, a)) for _ in range(3))
    report = {**harness.environment(), "shape": [args.layers, k, n], "weight_gb": round(weight_bytes / 1e9, 3),
              "gb_per_s": {name: harness.summary([weight_bytes / t / 1e9 for t in times], 2)
                           for name, times in run["times"].items()},
              "numpy_copy_read_plus_write_gb_per_s": round(2 * a.nbytes / copy_s / 1e9, 2), "load": run["load"]}
    med = {name: statistics.median(times) for name, times in run["times"].items()}
    report["xla_bf16_over_torch_time"] = round(med["xla_bf16_dot"] / med["torch_bf16_linear"], 2)
    report["kernel_over_torch_time"] = round(med["cpu_matvec_kernel"] / med["torch_bf16_linear"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
