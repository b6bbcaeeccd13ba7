"""model.attention='splash' (Pallas TPU splash attention, interpret mode on CPU) equals the xla path, which is
checked against transformers: forward and gradients, with causal + padding + packed segments and GQA, alone
and under shard_map on a simulated 4-device mesh (batch and heads sharded); plus 'auto' resolution."""

import pytest
import jax
import jax.numpy as jnp
import numpy as np
from train_helpers import run_on_devices
from xllava_jax.models.layers import MaskSpec, attend, resolve_attention

B, T, N, K, D = 2, 128, 4, 2, 128


def inputs(seed: int = 0):
    """q, k, v, a MaskSpec (row 0: two packed samples then padding; row 1: one sample, right padding) and the
    real-token mask [B, T]."""
    r = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(r.normal(size=s), jnp.float32) for s in ((B, T, N, D), (B, T, K, D), (B, T, K, D)))
    seg = np.zeros((B, T), np.int32)
    seg[0, :50], seg[0, 50:100] = 1, 2
    seg[1, :90] = 1
    key_mask = (seg > 0).astype(np.int32)
    return q, k, v, MaskSpec(jnp.asarray(key_mask), jnp.asarray(seg), 0, num_keys=T), jnp.asarray(key_mask)


def loss(impl, q, k, v, spec, real, cot):
    out = attend(q, k, v, spec, impl, "float32")
    return jnp.sum(out * cot * real[:, :, None, None])


@pytest.mark.slow
def test_splash_equals_xla_forward_and_gradients():
    q, k, v, spec, real = inputs()
    ref = attend(q, k, v, spec, "xla", "float32")
    out = attend(q, k, v, spec, "splash", "float32")
    rows = np.asarray(real, bool)
    np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(ref)[rows], atol=2e-5, rtol=2e-5)
    cot = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, N, D)), jnp.float32)
    g_ref = jax.grad(loss, argnums=(1, 2, 3))("xla", q, k, v, spec, real, cot)
    g_spl = jax.grad(loss, argnums=(1, 2, 3))("splash", q, k, v, spec, real, cot)
    for a, b in zip(g_spl, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5, rtol=5e-5)


def test_splash_without_segments_is_plain_causal_padding():
    q, k, v, spec, real = inputs(2)
    spec = MaskSpec(spec.key_mask, None, 0, num_keys=T)
    rows = np.asarray(real, bool)
    np.testing.assert_allclose(np.asarray(attend(q, k, v, spec, "splash", "float32"))[rows],
                               np.asarray(attend(q, k, v, spec, "xla", "float32"))[rows], atol=2e-5, rtol=2e-5)


def test_auto_resolution():
    assert resolve_attention("auto", "tpu") == "splash"
    assert resolve_attention("auto", "gpu", "bfloat16") == "cudnn"
    assert resolve_attention("auto", "gpu", "float32") == "xla"
    assert resolve_attention("auto", "cpu") == "xla"
    assert resolve_attention("xla", "tpu") == "xla"


SHARDED = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
sys.path.insert(0, sys.argv[1])
from test_attention_splash import inputs, loss
from xllava_jax.sharding import DEFAULT_RULES, make_mesh
q, k, v, spec, real = inputs()
cot = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
mesh = make_mesh(2, 1, 2)  # batch over data, heads over tensor
def grads(impl):
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        f = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3)), static_argnums=0)
        text = f.lower(impl, q, k, v, spec, real, cot).as_text()
        return f(impl, q, k, v, spec, real, cot), text
(l_s, g_s), text = grads("splash")
(l_x, g_x), _ = grads("xla")
print(json.dumps({"loss": [float(l_s), float(l_x)],
                  "shard_map": "shard_map" in text or "sdy.manual_computation" in text,
                  "grad_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(g_s, g_x))}))
"""


@pytest.mark.slow
def test_splash_under_shard_map_on_4_devices(train_subprocess_env):
    r = run_on_devices(SHARDED, 4, train_subprocess_env)
    assert r["shard_map"], r
    assert abs(r["loss"][0] - r["loss"][1]) <= 1e-4 * abs(r["loss"][1]), r
    assert r["grad_diff"] < 5e-5, r
