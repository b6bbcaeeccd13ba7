"""model.attention='cudnn': causality and padding go to cuDNN as its mask type and sequence lengths (no dense
bias). On CPU the same arguments run through XLA and equal the dense-mask path; on an NVIDIA GPU the cuDNN
kernel itself equals xla (skipped elsewhere)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xllava_jax.models.layers import MaskSpec, attend, cudnn_mask_args

B, T, N, K, D = 2, 64, 4, 2, 64


def inputs(dtype=jnp.float32):
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=s), dtype) for s in ((B, T, N, D), (B, T, K, D), (B, T, K, D)))
    key_mask = np.zeros((B, T), np.int32)
    key_mask[0, :40], key_mask[1, :] = 1, 1  # right padding in row 0
    return q, k, v, MaskSpec(jnp.asarray(key_mask), None, 0, num_keys=T), key_mask.astype(bool)


def test_mask_args_equal_dense_mask_on_cpu():
    q, k, v, spec, real = inputs()
    args = cudnn_mask_args(spec, B, T)
    assert args["is_causal"] and np.asarray(args["query_seq_lengths"]).tolist() == [40, T]
    ours = jax.nn.dot_product_attention(q, k, v, **args, implementation="xla")
    np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(attend(q, k, v, spec, "xla", "float32"))[real],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU with cuDNN")
def test_cudnn_equals_xla_on_gpu():
    q, k, v, spec, real = inputs(jnp.bfloat16)
    out = attend(q, k, v, spec, "cudnn", "bfloat16").astype(jnp.float32)
    ref = attend(q, k, v, spec, "xla", "bfloat16").astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=2e-2, rtol=2e-2)
