"""The CPU bf16 matvec kernel (models/cpu_kernels.py): against NumPy, inside the model against transformers, in
place in the compiled decode, and its failure modes."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_reference as ref
from xllava_jax.infer.batching import collate
from xllava_jax.infer.generate import Engine, decode, prefill
from xllava_jax.infer.loading import load_model
from xllava_jax.infer.sampling import SamplingConfig
from xllava_jax.models import cpu_kernels
from xllava_jax.models.params import build_model

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C++ compiler to build the kernel")


@pytest.mark.parametrize("rows, k, n, layers", [(1, 64, 96, 3), (3, 101, 2500, 2), (16, 37, 1030, 1),
                                                 (2, 8, 4097, 2)])
def test_kernel_equals_numpy(rows, k, n, layers):
    """Every layer of a stack, odd K (row-block remainder) and N (tile and thread split remainders)."""
    rng = np.random.default_rng(rows * k)
    w = jnp.asarray(rng.normal(size=(layers, k, n)), jnp.bfloat16)
    x = jnp.asarray(rng.normal(size=(rows, k)), jnp.float32)
    wide = np.asarray(w.astype(jnp.float32), np.float64)
    for layer in range(layers):
        got = np.asarray(jax.jit(cpu_kernels.matvec)(x, w, layer))
        want = np.asarray(x, np.float64) @ wide[layer]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))


def test_unstacked_weights_and_leading_dims():
    """[K, N] weights and x [B, T, K]: the lm-head case."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(40, 70)), jnp.bfloat16)
    x = jnp.asarray(rng.normal(size=(2, 1, 40)), jnp.float32)
    want = np.asarray(x, np.float64) @ np.asarray(w.astype(jnp.float32), np.float64)
    np.testing.assert_allclose(np.asarray(cpu_kernels.matvec(x, w)), want, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("matvec_llama")
    hf = ref.llama(seed=5, hidden_size=128, intermediate_size=344, num_hidden_layers=3)
    hf.to(torch.bfloat16).save_pretrained(path)
    return hf, path


def test_bf16_model_logits_match_transformers(bf16_llama):
    """A decode-sized forward (few rows: the kernel) against transformers in float32 on the same bf16 weights,
    as close as XLA's own dot gets."""
    hf, path = bf16_llama
    model, params = load_model(path, dtype="bfloat16")
    assert model.cfg.cpu_matvec
    ids = np.random.default_rng(1).integers(3, ref.IMAGE_TOKEN, size=(2, 5))
    with torch.no_grad():
        want = hf.float()(torch.from_numpy(ids)).logits.numpy()
    hf.to(torch.bfloat16)
    plain = build_model(dataclasses.replace(model.cfg, cpu_matvec=False))
    got, xla = (np.asarray(jax.jit(m.apply)({"params": params}, jnp.asarray(ids, jnp.int32))) for m in (model, plain))
    assert ref.scaled_diff(got, want) < 2e-2
    assert ref.scaled_diff(got, want) <= 1.5 * ref.scaled_diff(xla, want) + 1e-3


def test_decode_reads_stacked_weights_in_place(bf16_llama):
    """The compiled decode passes each stacked weight to the kernel: no per-layer slice of a weight matrix."""
    _, path = bf16_llama
    model, params = load_model(path, dtype="bfloat16")
    engine = Engine(model, params)
    arrays = engine.device_batch(collate([[5, 6, 7, 8]], None, 1, 0, None, None))
    eos = jnp.asarray([2], jnp.int32)
    state = prefill(model, params, *arrays, eos, jax.random.PRNGKey(0), max_new_tokens=6, sampling=SamplingConfig())
    hlo = decode.lower(model, params, state, eos, jnp.int32(6), sampling=SamplingConfig()).compile().as_text()
    assert hlo.count(f'custom_call_target="{cpu_kernels.TARGET}"') == 8  # q k v o gate up down, lm_head
    weight = re.compile(r"= bf16\[(128,344|344,128|128,128|128,\d+)\]\S* (dynamic-slice|copy|fusion)")
    assert [line for line in hlo.splitlines() if weight.search(line)] == []


def test_no_gradient_through_the_kernel(bf16_llama):
    """The kernel path is inference-only: differentiating it is an error, not a silent zero gradient."""
    _, path = bf16_llama
    model, params = load_model(path, dtype="bfloat16")
    ids = jnp.asarray([[5, 6]], jnp.int32)
    with pytest.raises(Exception, match="(?i)differentiat|jvp|transpose"):
        jax.grad(lambda p: model.apply({"params": p}, ids).sum())(params)


def test_build_failure_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("XLLAVA_KERNEL_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="false"):
        cpu_kernels.build(compiler="/bin/false")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape, layer, transpose", [((3, 40, 40), 1, True), ((3, 40, 40), 2, False),
                                                     ((3, 24, 56), 0, True), ((24, 56), None, True),
                                                     ((600, 300), None, False)])
def test_load_into_writes_one_slot(dtype, shape, layer, transpose):
    """The slot gets the host matrix (transposed when asked, square ones included); the other slots keep theirs."""
    rng = np.random.default_rng(len(shape))
    slot = shape[1:] if layer is not None else shape
    host = np.asarray(jnp.asarray(rng.normal(size=slot[::-1] if transpose else slot), dtype))
    before = jnp.asarray(rng.normal(size=shape), dtype)
    want = np.array(before)
    if layer is None:
        want[...] = host.T if transpose else host
    else:
        want[layer] = host.T if transpose else host
    got = cpu_kernels.load_into(before, host, layer, transpose=transpose)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_load_into_refuses_a_mismatched_host_array():
    with pytest.raises(ValueError, match="does not fit"):
        cpu_kernels.load_into(jnp.zeros((2, 4, 6), jnp.bfloat16), np.zeros((4, 6), np.float32), 0, transpose=False)
    with pytest.raises(ValueError, match="does not fit"):
        cpu_kernels.load_into(jnp.zeros((2, 4, 6), jnp.float32), np.zeros((4, 6), np.float32), 0, transpose=True)


def test_float32_checkpoint_loads_exactly(tmp_path):
    """A float32 HF LLaMA through the kernel loader (square and non-square matrices): logits as transformers'."""
    hf = ref.llama(seed=7, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
    hf.save_pretrained(tmp_path)
    model, params = load_model(tmp_path)
    assert model.cfg.param_dtype == "float32"
    ids = np.random.default_rng(2).integers(3, ref.IMAGE_TOKEN, size=(1, 6))
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    got = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(ids, jnp.int32)))
    assert ref.scaled_diff(got, want) < 1e-5
