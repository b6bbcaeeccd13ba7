"""Execution settings change how the model runs, not what it computes: scan vs unrolled, remat
policies and bfloat16 compute give the same logits and gradients (bf16 within its precision)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_reference as ref
from xllava_jax.models import CLIPVisionConfig, LlamaConfig, LlavaConfig, build_model, init_params


def config(**exec_kw) -> LlavaConfig:
    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                                image_size=28, patch_size=14, **exec_kw),
        text=LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, **exec_kw),
        image_token_id=60, pad_token_id=61)


def loss_and_grads(cfg: LlavaConfig, params):
    model = build_model(cfg)
    ids = np.tile(np.arange(12, dtype=np.int32), (2, 1))
    ids[0, 2:2 + cfg.num_image_tokens] = cfg.image_token_id
    images = ref.images_nhwc(1, cfg.vision.image_size)

    def loss(p):
        return jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, ids, pixel_values=images))[..., 7])

    return jax.jit(jax.value_and_grad(loss))(params)


BASE = config()
PARAMS = init_params(BASE, jax.random.PRNGKey(0))


@pytest.mark.parametrize("exec_kw", [dict(scan_layers=False), dict(remat_policy="full"),
                                     dict(remat_policy="dots"), dict(remat_policy="dots_no_batch", scan_layers=False)])
@pytest.mark.slow
def test_scan_and_remat_do_not_change_results(exec_kw):
    want_loss, want_grads = loss_and_grads(BASE, PARAMS)
    got_loss, got_grads = loss_and_grads(config(**exec_kw), PARAMS)
    assert ref.scaled_diff(got_loss, want_loss) < ref.TOLERANCE
    for g, w in zip(jax.tree_util.tree_leaves(got_grads), jax.tree_util.tree_leaves(want_grads)):
        assert ref.scaled_diff(g, w) < ref.TOLERANCE


@pytest.mark.slow
def test_bfloat16_compute_and_params_stay_close():
    cfg = config(dtype="bfloat16", param_dtype="bfloat16")
    bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    want, want_grads = loss_and_grads(BASE, PARAMS)
    got, grads = loss_and_grads(cfg, bf16)
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree_util.tree_leaves(grads))
    assert abs(float(got) - float(want)) < 0.05 * abs(float(want))
    # values, not only dtypes: each gradient within 5% of its fp32 scale (bf16 keeps 8 bits, ~0.4% a rounding;
    # measured <= 1.6% after 3+3 layers); a floor at 1e-3 of the largest gradient for those that are ~0 in
    # fp32 (CLIP's key bias: softmax ignores it, so its fp32 gradient is round-off of 1e-13)
    want_leaves = [np.asarray(w, np.float64) for w in jax.tree_util.tree_leaves(want_grads)]
    scale = max(np.abs(w).max() for w in want_leaves)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), want_leaves):
        err = np.abs(np.asarray(g, np.float64) - w).max()
        assert err <= 0.05 * max(np.abs(w).max(), 1e-3 * scale), (jax.tree_util.keystr(path), err, np.abs(w).max())


def test_unknown_settings_are_named():
    with pytest.raises(ValueError, match="remat_policy='sometimes'"):
        build_model(config(remat_policy="sometimes"))
    with pytest.raises(ValueError, match="attention='flash'"):
        build_model(config(attention="flash"))
    with pytest.raises(ValueError, match="num_key_value_heads=3"):
        build_model(dataclasses.replace(BASE, text=dataclasses.replace(BASE.text, num_key_value_heads=3)))
    with pytest.raises(ValueError, match="image_token_id=64"):
        build_model(dataclasses.replace(BASE, image_token_id=64))
