"""XLA:CPU kernels (cpu_kernels.cc, XLA FFI custom calls) for what XLA:CPU does slowly on 16-bit weights:
- `matvec`: x @ w[layer] for a few rows (decode), reading the stacked bf16 weights in place. XLA:CPU has no bf16
  arithmetic and widens a whole bf16 weight to float32 in memory before each dot, so batch-1 decode moved several
  times the weight bytes per token;
- `matmul`: x @ w[layer] for many rows (prefill) on CPUs with AVX512-BF16, bf16 products accumulated in float32
  (XLA:CPU reaches ~340 GFLOP/s there only by widening to float32, after slicing the layer out of the stack);
- `attention`: prefill attention of bf16 q, k, v on CPUs with AVX512-BF16, its two products as the GEMM's, the
  softmax between them on a few query rows at a time in cache (XLA:CPU writes and reads [B, N, T, S] float32
  logits and runs these per-head products at ~100 GFLOP/s: 2.5 s of a 7B image prefill);
- `MappedKernel`: Dense kernels that stay in a memory-mapped checkpoint, in its Linear [out, in] layout, their
  products read in place (x @ w^T, both operands pairs of bf16 along K: dot products for decode, the GEMM's tiles
  for prefill). Loading then copies nothing: on this VM, memory not touched lately is handed out at 0.5-1.3 GB/s,
  so copying a 7B checkpoint into fresh memory took 7-10 s where mapping it takes none;
- `load_stack`: a stacked leaf from its per-layer host matrices (memory-mapped checkpoint tensors), copied or
  transposed (HF [out, in] matrices into our [in, out] stacks) in one call, reading the host memory once, into a
  fresh buffer; XLA:CPU's and NumPy's transposes of these matrices run at 0.2-0.6 GB/s,
  `jax.device_put` of a mapped tensor at ~1.5 GB/s, and zero-filling a stack first faults every 4 KB page.

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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from flax import struct

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
TARGET = "xllava_bf16_matvec"
LOAD_TARGET = "xllava_load_stack"
GEMM_TARGET = "xllava_bf16_gemm"
ATTENTION_TARGET = "xllava_bf16_attention"
MAPPED_TARGET = "xllava_mapped_bf16_product"
MAX_ROWS = 16  # rows a call may carry (kMaxRows in cpu_kernels.cc); more rows are compute-bound: XLA's dot
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
    out = cache_dir() / f"cpu_kernels-{key}.so"
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
        jax.ffi.register_ffi_target(LOAD_TARGET, jax.ffi.pycapsule(lib.XllavaLoadStack), platform="cpu")
        jax.ffi.register_ffi_target(GEMM_TARGET, jax.ffi.pycapsule(lib.XllavaBf16Gemm), platform="cpu")
        jax.ffi.register_ffi_target(ATTENTION_TARGET, jax.ffi.pycapsule(lib.XllavaBf16Attention), platform="cpu")
        jax.ffi.register_ffi_target(MAPPED_TARGET, jax.ffi.pycapsule(lib.XllavaMappedProduct), platform="cpu")
    except (OSError, RuntimeError) as e:
        log.warning("CPU kernels unavailable; bf16 decode and checkpoint loading use XLA (several times slower): %s", e)
        return False
    return True


def _require() -> None:
    if not available():
        raise RuntimeError("the CPU kernels are unavailable (see the warning logged above)")


@functools.cache
def gemm_available() -> bool:
    """Whether the bf16 GEMM kernel runs here: the kernels are built and the CPU has AVX512-BF16."""
    return available() and "avx512_bf16" in _cpu_id().split()


def product(rows: int, weights: jax.Array, x_dtype: Any) -> Callable | None:
    """The kernel for `rows` rows of x (`x_dtype`) times `weights` ([K, N] or [L, K, N]): `matvec` for up to
    MAX_ROWS rows of bf16 weights, `matmul` for more when x is bf16 too and the CPU has AVX512-BF16; None: XLA's
    dot."""
    if weights.dtype != jnp.bfloat16 or weights.ndim not in (2, 3) or not available():
        return None
    if rows <= MAX_ROWS:
        return matvec
    return matmul if jnp.dtype(x_dtype) == jnp.bfloat16 and gemm_available() else None


def _call(target: str, rows: jax.Array, weights: jax.Array, layer: jax.Array | int) -> jax.Array:
    """rows [M, K] @ weights[layer] (weights [L, K, N], or [K, N]) as float32 [M, N] by the kernel `target`."""
    _require()
    stacked = weights if weights.ndim == 3 else weights[None]  # a bitcast, not a copy
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((rows.shape[0], stacked.shape[2]), jnp.float32))
    return call(rows, stacked, jnp.asarray(layer, jnp.int32))


def matvec(x: jax.Array, weights: jax.Array, layer: jax.Array | int = 0) -> jax.Array:
    """x [..., K] @ weights[layer] (weights [L, K, N] bf16, or [K, N]) as float32 [..., N], reading in place."""
    rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    return _call(TARGET, rows, weights, layer).reshape(*x.shape[:-1], -1)


def matmul(x: jax.Array, weights: jax.Array, layer: jax.Array | int = 0) -> jax.Array:
    """x [..., K] (bf16) @ weights[layer] (weights [L, K, N] bf16, or [K, N]) as float32 [..., N], reading the
    weights in place; needs gemm_available()."""
    rows = x.reshape(-1, x.shape[-1]).astype(jnp.bfloat16)
    return _call(GEMM_TARGET, rows, weights, layer).reshape(*x.shape[:-1], -1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, scale: float) -> jax.Array:
    """softmax(scale * q k^T, masked) v as float32 [B, T, N, D] for bf16 q [B, T, N, D], k and v [B, S, K, D] (N a
    multiple of K, D even), `mask` boolean [B|1, 1|N, T, S] (True = attend) or None; cpu_attention's math (masked
    logits -0.7 x float32's max, softmax in float32, probabilities cast to bf16, products accumulated in float32)
    with keys no query row of a 12-row block attends skipped. Needs gemm_available()."""
    _require()
    b, t, _, _ = q.shape
    s = k.shape[1]
    mask = jnp.ones((1, 1, t, s), bool) if mask is None else jnp.asarray(mask, bool)
    if mask.ndim != 4:
        raise ValueError(f"attention: mask of shape {mask.shape}; expected [B|1, 1|N, {t}, {s}]")
    call = jax.ffi.ffi_call(ATTENTION_TARGET, jax.ShapeDtypeStruct(q.shape, jnp.float32))
    return call(q, k, v, mask, scale=np.float32(scale))


RELEASES = ("keep", "unmap", "evict")  # Release in cpu_kernels.cc


def address_halves(pointers: Any) -> np.ndarray:
    """Host addresses as [..., 2] uint32 (low, high): JAX has no 64-bit integers by default."""
    pointers = np.asarray(pointers, np.uint64)
    return np.stack([pointers & 0xFFFFFFFF, pointers >> 32], -1).astype(np.uint32)


@struct.dataclass
class MappedKernel:
    """Dense kernels [in, out] that stay in host memory (a memory-mapped checkpoint) as bf16 Linear matrices
    [out, in], read in place by the CPU kernels. `addresses` [..., 2] uint32 (address_halves): one matrix, or one
    per layer when stacked (the layer loop slices them as any stacked param); `owner` keeps the memory mapped while
    these params live. Loading copies nothing; there is no gradient (inference only)."""

    addresses: jax.Array
    kernel_shape: tuple = struct.field(pytree_node=False)  # (in, out) of each Dense kernel
    owner: Any = struct.field(pytree_node=False)

    def product(self, x: jax.Array) -> jax.Array:
        """x [..., in] @ the kernel as float32 [..., out] (addresses [2]): in place for bf16 x and an even `in`,
        else XLA's dot of value()."""
        k, n = self.kernel_shape
        if x.dtype != jnp.bfloat16 or k % 2:
            return jnp.matmul(x, self.value().astype(x.dtype), preferred_element_type=jnp.float32)
        _require()
        rows = x.reshape(-1, k)
        call = jax.ffi.ffi_call(MAPPED_TARGET, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32))
        return call(rows, self.addresses).reshape(*x.shape[:-1], n)

    def value(self) -> jax.Array:
        """The kernel [in, out] (addresses [2]) copied out of host memory."""
        _require()
        call = jax.ffi.ffi_call(LOAD_TARGET, jax.ShapeDtypeStruct(self.kernel_shape, jnp.bfloat16))
        return call(self.addresses, transpose=True, release=np.int32(RELEASES.index("keep")))


class Keep:
    """Keeps an object (what maps the memory behind MappedKernel addresses) alive; equal only to itself, as pytree
    metadata must be."""

    __slots__ = ("held",)

    def __init__(self, held: Any):
        self.held = held


def mapped_kernel(hosts: list[np.ndarray], kernel_shape: tuple, owner: Any) -> MappedKernel:
    """A MappedKernel over host matrices [out, in] (one, or one per layer: stacked) that `owner` keeps mapped."""
    for host in hosts:
        if not maps(host, jnp.bfloat16, kernel_shape):
            raise ValueError(f"mapped_kernel: host {host.dtype}{list(host.shape)} (C order: {host.flags.c_contiguous})"
                             f" cannot stand for a bf16{list(kernel_shape)} kernel here")
    pointers = [h.ctypes.data for h in hosts]
    return MappedKernel(jnp.asarray(address_halves(pointers[0] if len(hosts) == 1 else pointers)),
                        tuple(kernel_shape), Keep(owner))


def mapped_leaves(tree: Any) -> list[MappedKernel]:
    """The MappedKernels in a params tree."""
    is_mapped = lambda x: isinstance(x, MappedKernel)  # noqa: E731
    return [x for x in jax.tree.leaves(tree, is_leaf=is_mapped) if is_mapped(x)]


def require_copied(params: Any, action: str) -> None:
    """Raise ValueError when `params` hold MappedKernels, which `action` (saving) cannot take: they are addresses."""
    if mapped_leaves(params):
        raise ValueError(f"cannot {action}: these params leave Linear weights in the mapped checkpoint file "
                         "(load_model with bf16 compute on CPU); load them with mapped=False")


def maps(host: np.ndarray, dtype: Any, slot: tuple) -> bool:
    """Whether a host matrix (an HF Linear weight [out, in]) can stand in place for a Dense kernel `slot` [in, out]
    of `dtype`: both bf16, shapes transposed, C order, and the CPU runs the mapped products."""
    return (host.dtype == jnp.bfloat16 and jnp.dtype(dtype) == jnp.bfloat16 and len(slot) == 2
            and tuple(host.shape) == tuple(slot[::-1]) and host.flags.c_contiguous and gemm_available())


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "transpose", "release"))
def _load_stack(addresses: jax.Array, shape: tuple, dtype: Any, transpose: bool, release: str) -> jax.Array:
    call = jax.ffi.ffi_call(LOAD_TARGET, jax.ShapeDtypeStruct(shape, dtype))
    return call(addresses, transpose=transpose, release=np.int32(RELEASES.index(release)))


def load_stack(hosts: list[np.ndarray], shape: tuple, *, transpose: bool, release: str = "keep") -> jax.Array:
    """A new array of `shape` ([L, *S] from L host matrices, or S from one) on the first CPU device, each host
    matrix (shape S, or S reversed and transposed when `transpose`) read once; returns when done (`hosts` may go).

    `release` says what happens to each host matrix's pages once copied: "keep"; "unmap" (dropped from this
    process; they stay in the page cache); "evict" (from the page cache too, unless another process maps them).
    Anything but "keep" is only for read-only file mappings: anonymous memory would read back as zeros.
    """
    _require()
    if release not in RELEASES:
        raise ValueError(f"load_stack: release {release!r} is not one of {RELEASES}")
    slot = tuple(shape[1:] if len(shape) == 3 else shape)
    want = slot[::-1] if transpose else slot
    dtype = hosts[0].dtype
    for host in hosts:
        if host.dtype != dtype or not host.flags.c_contiguous or len(slot) != 2 or tuple(host.shape) != want:
            raise ValueError(f"load_stack: host {host.dtype}{list(host.shape)} (C order: {host.flags.c_contiguous}) "
                             f"does not fit a {dtype}{list(slot)} slot (transpose={transpose})")
    if (len(shape) == 3 and shape[0] != len(hosts)) or (len(shape) == 2 and len(hosts) != 1):
        raise ValueError(f"load_stack: {len(hosts)} host matrices for shape {list(shape)}")
    addresses = jnp.asarray(address_halves([h.ctypes.data for h in hosts]))
    return _load_stack(addresses, tuple(shape), jnp.dtype(dtype), transpose, release).block_until_ready()


def loads(host_dtype, dtype, slot: tuple, sharding) -> bool:
    """Whether load_stack can write HF tensors of `host_dtype` into a leaf of `dtype` whose (per-layer) slot has
    shape `slot` on `sharding`: a 2-D slot, the same dtype of 2 or 4 bytes, one CPU device."""
    return (len(slot) == 2 and jnp.dtype(host_dtype) == jnp.dtype(dtype) and jnp.dtype(dtype).itemsize in (2, 4)
            and on_one_cpu(sharding) and available())


def on_one_cpu(sharding: Any) -> bool:
    """Whether `sharding` puts a whole array on one CPU device (host memory the kernels can write or read)."""
    return len(sharding.device_set) == 1 and next(iter(sharding.device_set)).platform == "cpu"
