"""Mixed-precision numerics as LLaVA trains: embedding gradients summed in the parameter dtype, float32 LM-head
logits, the projector initialised as PyTorch nn.Linear, and start-up warnings for lossy precision settings."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from xllava_jax.models import LlamaConfig, build_model, init_params
from xllava_jax.models.layers import ExecConfig
from xllava_jax.models.projector import Projector
from xllava_jax.train.defaults import base_config
from xllava_jax.train.validate import ConfigError, numeric_warnings, validate

BF16 = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, dtype="bfloat16")


@pytest.mark.slow
def test_embedding_gradient_of_a_frequent_token_is_summed_in_float32():
    cfg = LlamaConfig(**BF16)
    model = build_model(cfg)
    params = init_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 64, (2, 2048))
    ids[:, ::2] = 5  # token 5 about 2,000 times in the batch
    g = rng.normal(size=(2, 2048, 32)).astype(np.float32)

    def f(p):
        out = model.apply({"params": p}, jnp.asarray(ids, jnp.int32), method=model.embed)
        assert out.dtype == jnp.bfloat16
        return jnp.sum(out.astype(jnp.float32) * g)
    got = np.asarray(jax.grad(f)(params)["embed_tokens"]["embedding"], np.float64)
    # NumPy float64: the cotangent reaches the table in bf16; its rows must be summed without further rounding
    g16 = np.asarray(jnp.asarray(g, jnp.bfloat16).astype(jnp.float32), np.float64)
    want = np.zeros((64, 32))
    np.add.at(want, ids.reshape(-1), g16.reshape(-1, 32))
    err = np.abs(got[5] - want[5]).max() / np.abs(want[5]).max()
    assert err < 1e-5, err  # bf16 lookup (the table cast first): ~4e-2


@pytest.mark.slow
def test_lm_head_logits_accumulate_in_float32():
    for tied in (False, True):
        cfg = LlamaConfig(**BF16, tie_word_embeddings=tied)
        model = build_model(cfg)
        params = init_params(cfg, jax.random.PRNGKey(1))
        hidden = np.random.default_rng(1).normal(size=(2, 5, 32)).astype(np.float32)
        got = np.asarray(model.apply({"params": params}, jnp.asarray(hidden, jnp.bfloat16), method=model.logits))
        w = params["embed_tokens"]["embedding"].T if tied else params["lm_head"]["kernel"]
        h16 = np.asarray(jnp.asarray(hidden, jnp.bfloat16).astype(jnp.float32), np.float64)
        w16 = np.asarray(jnp.asarray(w, jnp.bfloat16).astype(jnp.float32), np.float64)
        want = h16 @ w16
        err = np.abs(got - want).max() / np.abs(want).max()
        assert got.dtype == np.float32 and err < 1e-5, (tied, err)  # bf16 matmul output: ~3e-3


def test_projector_initialised_as_torch_linear():
    fan_in, out = 1024, 256
    params = nn.unbox(Projector("mlp2x_gelu", out, ExecConfig()).init(
        jax.random.PRNGKey(0), np.zeros((1, 1, fan_in), np.float32))["params"])
    torch.manual_seed(0)
    for name, fin in (("linear_1", fan_in), ("linear_2", out)):
        ref = torch.nn.Linear(fin, out)  # LLaVA's projector layers, PyTorch default init
        for ours, theirs in ((params[name]["kernel"], ref.weight), (params[name]["bias"], ref.bias)):
            ours, theirs = np.asarray(ours), theirs.detach().numpy()
            bound = np.abs(theirs).max()
            assert np.abs(ours).max() <= fin ** -0.5 + 1e-7 and np.abs(ours).max() > 0.95 * bound, name
            assert abs(ours.std() / theirs.std() - 1) < 0.15, (name, ours.std(), theirs.std())
            assert abs(ours.mean()) < 0.1 * ours.std() + 1e-3, name


def test_lossy_precision_settings_warn_at_start(caplog):
    config = base_config(2)
    assert numeric_warnings(config) == []
    config.model.dtype, config.model.param_dtype = "float16", "bfloat16"
    found = numeric_warnings(config)
    assert any("loss scaling" in w for w in found) and any("master copy" in w for w in found)
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError):  # the bare base config has no data
        validate(config, num_devices=1, num_processes=1)
    assert "loss scaling" in caplog.text and "master copy" in caplog.text
