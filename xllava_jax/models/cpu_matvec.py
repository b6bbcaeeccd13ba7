"""The bf16 matrix-vector kernel of CPU decode (cpu_matvec.cc, an XLA FFI custom call): x @ w[layer] for a few
rows, reading the stacked bf16 weights in place. XLA:CPU has no bf16 arithmetic and widens a whole bf16 weight
to float32 in memory before each dot, so batch-1 decode moved several times the weight bytes per token.

Built on first use with the host's C++ compiler (-O3 -march=native) into a cache keyed by the source, jaxlib and
the CPU; without a compiler, `available()` is False (logged once) and callers keep XLA's dot.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_matvec.cc")
TARGET = "xllava_bf16_matvec"
MAX_ROWS = 16  # rows a call may carry (kMaxRows in cpu_matvec.cc); more rows are compute-bound: XLA's dot
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


def cache_dir() -> Path:
    """Where built kernels live: $XLLAVA_KERNEL_CACHE, else ~/.cache/xllava_jax/kernels."""
    return Path(os.environ.get("XLLAVA_KERNEL_CACHE", Path.home() / ".cache" / "xllava_jax" / "kernels"))


def _cpu_id() -> str:
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def build(compiler: str | None = None) -> Path:
    """The compiled kernel library, built now if the cache has none for this source, jaxlib and CPU."""
    compiler = compiler or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler (g++/c++ or $CXX) to build the bf16 matvec kernel")
    key = hashlib.sha256("\0".join([SOURCE.read_text(), jaxlib.__version__, " ".join(FLAGS), compiler,
                                    _cpu_id()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"cpu_matvec-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(tmp_out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the bf16 matvec kernel failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        os.replace(tmp_out, out)  # atomic: concurrent builders each publish a whole file
    return out


@functools.cache
def available() -> bool:
    """Whether the kernel is built and registered with XLA:CPU (False, logged once, when it cannot be)."""
    if os.environ.get("XLLAVA_CPU_MATVEC", "1") == "0":
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(build()))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.XllavaBf16Matvec), platform="cpu")
    except (OSError, RuntimeError) as e:
        log.warning("CPU bf16 decode uses XLA's dot (several times slower): %s", e)
        return False
    return True


def applies(rows: int, weights: jax.Array) -> bool:
    """Whether a product of `rows` rows with `weights` ([K, N] or [L, K, N]) should take the kernel."""
    return weights.dtype == jnp.bfloat16 and weights.ndim in (2, 3) and rows <= MAX_ROWS and available()


def matvec(x: jax.Array, weights: jax.Array, layer: jax.Array | int = 0) -> jax.Array:
    """x [..., K] @ weights[layer] (weights [L, K, N] bf16, or [K, N]) as float32 [..., N], reading in place."""
    stacked = weights if weights.ndim == 3 else weights[None]  # a bitcast, not a copy
    k, n = stacked.shape[1:]
    rows = x.reshape(-1, k).astype(jnp.float32)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32))
    return call(rows, stacked, jnp.asarray(layer, jnp.int32)).reshape(*x.shape[:-1], n)
