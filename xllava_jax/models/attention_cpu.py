"""Scaled dot-product attention in plain jnp, the form XLA's CPU backend compiles well.

`jax.nn.dot_product_attention(implementation="xla")` computes the same two einsums but builds its
mask as `ones_like(logits) & mask` (a materialized [B, N, T, S] boolean, forward and backward) and routes
grouped-query attention through vmap; on CPU its forward + backward runs about 2x slower than this
function at the benchmark shape (bench/PROFILE.md). The grouped form is used only when K < N. Logits and softmax are
float32 (as jax's xla implementation), masked logits get the same large negative value, so a fully
masked (padding) query row comes out as the uniform average of the values in both.

For inference (`kernels`), bf16 prefill (more query rows than a decode step) goes to the fused CPU kernel
cpu_kernels.attention: the same math a few query rows at a time, skipping the keys a causal mask hides.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from xllava_jax.models import cpu_kernels


def cpu_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, kernels: bool = False
                  ) -> jax.Array:
    """Attention [B, T, N, D] x [B, S, K, D] -> [B, T, N, D] (GQA when K < N); `mask`: boolean
    [B|1, 1|N, T, S] (True = attend) or None; `kernels` (inference only): bf16 prefill through
    cpu_kernels.attention where it runs."""
    b, t, n, d = q.shape
    kv_heads = k.shape[2]
    scale = 1.0 / math.sqrt(d)
    if (kernels and q.dtype == k.dtype == v.dtype == jnp.bfloat16 and t > cpu_kernels.MAX_ROWS and d % 2 == 0
            and cpu_kernels.gemm_available()):
        return cpu_kernels.attention(q, k, v, mask, scale).astype(v.dtype)
    if kv_heads == n:
        logits = jnp.einsum("btnd,bsnd->bnts", q, k, preferred_element_type=jnp.float32)
    else:
        qg = q.reshape(b, t, kv_heads, n // kv_heads, d)
        logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
        logits = logits.reshape(b, n, t, k.shape[1])
    logits = logits * jnp.float32(scale)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.float32(-0.7 * jnp.finfo(jnp.float32).max))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    # accumulated and returned in float32, then cast: XLA:CPU's 16-bit-output dot runs at half the speed
    if kv_heads == n:
        return jnp.einsum("bnts,bsnd->btnd", probs, v, preferred_element_type=jnp.float32).astype(v.dtype)
    probs = probs.reshape(b, kv_heads, n // kv_heads, t, k.shape[1])
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32).astype(v.dtype)
    return out.reshape(b, t, n, d)
