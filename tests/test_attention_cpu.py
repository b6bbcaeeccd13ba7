"""The CPU attention path (models/attention_cpu.py) against jax.nn.dot_product_attention's xla implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xllava_jax.models.attention_cpu import cpu_attention
from xllava_jax.models.layers import MaskSpec


@pytest.mark.slow
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cpu_attention_equals_jax_xla_values_and_grads(kv_heads, dtype):
    rng = np.random.default_rng(0)
    b, t, n, d = 2, 12, 4, 8
    q = jnp.asarray(rng.normal(size=(b, t, n, d)), dtype)
    k, v = (jnp.asarray(rng.normal(size=(b, t, kv_heads, d)), dtype) for _ in range(2))
    key_mask = jnp.asarray(np.arange(t)[None, :] >= np.array([[0], [5]]), jnp.int32)  # row 1 left-padded
    mask = MaskSpec(key_mask, None, 0, num_keys=t).dense(t)
    real = key_mask.astype(bool)[:, :, None, None]  # padding query rows may differ between kernels

    def loss(f):
        return lambda q, k, v: jnp.sum(jnp.where(real, f(q, k, v, mask), 0).astype(jnp.float32) ** 2)

    ref = lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m, implementation="xla")  # noqa: E731
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.where(real, cpu_attention(q, k, v, mask), 0).astype(np.float32),
                               np.where(real, ref(q, k, v, mask), 0).astype(np.float32), atol=tol, rtol=tol)
    ours = jax.grad(loss(cpu_attention), argnums=(0, 1, 2))(q, k, v)
    theirs = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for a, c in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(c, np.float32), atol=5 * tol, rtol=5 * tol)


def test_attend_on_cpu_routes_xla_to_cpu_attention(monkeypatch):
    import xllava_jax.models.attention_cpu as attention_cpu
    from xllava_jax.models.layers import attend
    calls = []
    monkeypatch.setattr(attention_cpu, "cpu_attention", lambda *a: calls.append(1) or a[0])
    x = jnp.ones((1, 4, 2, 8))
    attend(x, x, x, MaskSpec(None, None, 0, num_keys=4), "xla", "float32")
    assert calls == [1]
