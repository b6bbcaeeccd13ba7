"""The CPU bf16 matvec kernel (models/cpu_kernels.py): against NumPy, inside the model against transformers, in
place in the compiled decode, and its failure modes."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

import hf_reference as ref
from xllava_jax.infer.batching import collate
from xllava_jax.infer.generate import Engine, decode, prefill
from xllava_jax.infer.loading import load_model
from xllava_jax.infer.sampling import SamplingConfig
from xllava_jax import checkpoint
from xllava_jax.convert import hf as hf_convert
from xllava_jax.convert.safetensors_io import StateDict
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


needs_gemm = pytest.mark.skipif(not cpu_kernels.gemm_available(), reason="the CPU has no AVX512-BF16")


@needs_gemm
@pytest.mark.parametrize("rows, k, n, layers", [(17, 64, 96, 2), (30, 101, 250, 1), (1000, 37, 33, 3),
                                                 (25, 4100, 130, 1), (20, 8193, 40, 1), (13, 2049, 31, 2),
                                                 (12, 2, 1, 1)])
def test_gemm_equals_numpy(rows, k, n, layers):
    """Every layer of a stack; row counts off the 12-row tile, K odd and over 4096-deep blocks (accumulated
    across blocks, the odd last row), N off the 32-column panel and 128-column block."""
    rng = np.random.default_rng(rows * k + n)
    w = jnp.asarray(rng.normal(size=(layers, k, n)), jnp.bfloat16)
    x = jnp.asarray(rng.normal(size=(rows, k)), jnp.bfloat16)
    wide = np.asarray(w.astype(jnp.float32), np.float64)
    for layer in range(layers):
        got = np.asarray(jax.jit(cpu_kernels.matmul)(x, w, layer))
        want = np.asarray(x.astype(jnp.float32), np.float64) @ wide[layer]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))


@needs_gemm
def test_gemm_odd_depth_reads_nothing_past_a_row():
    """With K odd, a row's last pair holds only its own last element: an infinity starting the next row (or lying
    past x) does not turn the row into NaN (inf * 0)."""
    rng = np.random.default_rng(5)
    x = np.array(jnp.asarray(rng.normal(size=(20, 37)), jnp.bfloat16))
    x[1:, 0] = np.inf
    w = jnp.asarray(rng.normal(size=(37, 40)), jnp.bfloat16)
    got = np.asarray(cpu_kernels.matmul(jnp.asarray(x), w))
    want = np.asarray(x[:1].astype(np.float32), np.float64) @ np.asarray(w.astype(jnp.float32), np.float64)
    np.testing.assert_allclose(got[:1], want, rtol=1e-5, atol=1e-4)


def numpy_attention(q, k, v, mask, scale):
    """Attention in float64 NumPy as cpu_attention defines it: masked logits -0.7 x float32's max, softmax, the
    probabilities rounded to bf16, then the values; q [B, T, N, D], k v [B, S, K, D], mask [B|1, N|1, T, S]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("btnd,bsnd->bnts", q, k) * scale
    logits = np.where(mask, logits, -0.7 * np.finfo(np.float32).max)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (e / e.sum(-1, keepdims=True)).astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)
    return np.einsum("bnts,bsnd->btnd", probs, v)


@needs_gemm
@pytest.mark.parametrize("batch, t, s, heads, kv, d, kind", [
    (1, 200, 200, 4, 4, 64, "causal"),  # query rows off the 12-row block and the 96-row task
    (2, 37, 50, 6, 2, 80, "cached"),  # GQA, keys beyond the queries (a prompt after cached slots), D off the panel
    (3, 30, 33, 2, 1, 16, "padded"),  # causal + padded keys, a query row that attends nothing (uniform average)
    (1, 25, 25, 3, 3, 32, "heads"),  # a mask per head
    (2, 17, 577, 2, 2, 64, "none"),  # no mask (the vision tower), odd S
])
def test_attention_equals_numpy(batch, t, s, heads, kv, d, kind):
    """The fused prefill attention against NumPy float64: masks of every shape the models pass, GQA, fully masked
    rows, and the causal future it skips."""
    rng = np.random.default_rng(t * s + d)
    q = jnp.asarray(rng.normal(size=(batch, t, heads, d)) * 2, jnp.bfloat16)
    k, v = (jnp.asarray(rng.normal(size=(batch, s, kv, d)) * 2, jnp.bfloat16) for _ in range(2))
    full = np.ones((1, 1, t, s), bool)
    mask = {"causal": np.tril(full, 0), "cached": np.tril(full, s - t), "none": None,
            "padded": np.tril(full, s - t) & (rng.random((batch, 1, 1, s)) < 0.7),
            "heads": rng.random((1, heads, t, s)) < 0.5}[kind]
    if kind == "padded":
        mask[1, 0, 4] = False
    got = np.asarray(jax.jit(cpu_kernels.attention, static_argnums=4)(q, k, v, mask, d ** -0.5))
    want = numpy_attention(q, k, v, full if mask is None else mask, d ** -0.5)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * float(np.abs(np.asarray(v, np.float32)).max()))
    if kind == "padded":
        np.testing.assert_allclose(got[1, 4, 0], np.asarray(v[1, :, 0], np.float64).mean(0), rtol=1e-3, atol=1e-3)


def test_kernel_choice():
    """Few rows: matvec; more: the GEMM for bf16 x where the CPU has it, else XLA; never for float32 weights."""
    w = jnp.zeros((2, 8, 8), jnp.bfloat16)
    assert cpu_kernels.product(16, w, jnp.float32) is cpu_kernels.matvec
    assert cpu_kernels.product(17, w, jnp.bfloat16) is (cpu_kernels.matmul if cpu_kernels.gemm_available() else None)
    assert cpu_kernels.product(17, w, jnp.float32) is None
    assert cpu_kernels.product(1, w.astype(jnp.float32), jnp.float32) is None


@needs_gemm
@pytest.mark.parametrize("rows, k, n", [(1, 64, 96), (3, 100, 37), (16, 4098, 130), (17, 64, 33), (40, 8194, 259),
                                        (13, 2, 1), (1000, 34, 65)])
def test_mapped_kernel_equals_numpy(rows, k, n):
    """x @ w^T read in place from host matrices [N, K] (HF Linear layout) for decode-sized (dot products) and
    prefill-sized row counts (the GEMM's tiles on gathered panels): K off the 32-wide vector and over the 4096-deep
    block, N off the 4-row dot block, the 32-row panel and 128-row block; every layer of a stack; and value()."""
    rng = np.random.default_rng(rows + k + n)
    hosts = [np.asarray(rng.normal(size=(n, k)), ml_dtypes.bfloat16) for _ in range(2)]
    stacked = cpu_kernels.mapped_kernel(hosts, (k, n), hosts)
    x = jnp.asarray(rng.normal(size=(rows, k)), jnp.bfloat16)
    for layer, host in enumerate(hosts):
        one = cpu_kernels.MappedKernel(stacked.addresses[layer], stacked.kernel_shape, stacked.owner)
        got = np.asarray(jax.jit(lambda m, x: m.product(x))(one, x))
        want = np.asarray(x, np.float64) @ host.astype(np.float64).T
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))
        np.testing.assert_array_equal(np.asarray(jax.jit(lambda m: m.value())(one)), host.T)


@needs_gemm
def test_mapped_kernel_falls_back_for_float32_rows_and_odd_depth():
    """Rows that are not bf16, or an odd K (no whole bf16 pairs along K), take XLA's dot of the copied-out kernel."""
    rng = np.random.default_rng(0)
    for k, dtype in ((37, jnp.bfloat16), (64, jnp.float32)):
        host = np.asarray(rng.normal(size=(20, k)), ml_dtypes.bfloat16)
        kernel = cpu_kernels.mapped_kernel([host], (k, 20), host)
        x = jnp.asarray(rng.normal(size=(3, 5, k)), dtype)
        hlo = jax.jit(lambda m, x: m.product(x)).lower(kernel, x).as_text()
        assert cpu_kernels.MAPPED_TARGET not in hlo
        want = np.asarray(x, np.float64) @ host.astype(np.float64).T
        np.testing.assert_allclose(np.asarray(kernel.product(x)), want, rtol=2e-2, atol=2e-2 * np.sqrt(k))


def test_mapped_kernel_refuses_what_it_cannot_read_in_place():
    host = np.zeros((8, 4), ml_dtypes.bfloat16)
    for bad, slot in ((host, (8, 4)), (host.astype(np.float32), (4, 8)), (np.asfortranarray(host), (4, 8))):
        with pytest.raises(ValueError, match="cannot stand for"):
            cpu_kernels.mapped_kernel([bad], slot, bad)


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("matvec_llama")
    hf = ref.llama(seed=5, hidden_size=128, intermediate_size=344, num_hidden_layers=3)
    hf.to(torch.bfloat16).save_pretrained(path)
    return hf, path


@pytest.mark.parametrize("mapped", [False, True])
@pytest.mark.parametrize("length", [5, 40])
def test_bf16_model_logits_match_transformers(bf16_llama, length, mapped):
    """A decode-sized forward (few rows: matvec) and a prefill-sized one (80 rows: the GEMM where the CPU has
    it) against transformers in float32 on the same bf16 weights, as close as XLA's own dot gets; with the Linear
    weights copied into our stacks, and left in the mapped file (the default where the CPU has AVX512-BF16)."""
    hf, path = bf16_llama
    model, params = load_model(path, dtype="bfloat16", mapped=mapped)
    assert model.cfg.cpu_matvec
    assert mapped_kernels(params) == (8 * cpu_kernels.gemm_available() if mapped else 0)  # 7 a layer, lm_head
    ids = np.random.default_rng(1).integers(3, ref.IMAGE_TOKEN, size=(2, length))
    with torch.no_grad():
        want = hf.float()(torch.from_numpy(ids)).logits.numpy()
    hf.to(torch.bfloat16)
    plain = build_model(dataclasses.replace(model.cfg, cpu_matvec=False))
    got, xla = (np.asarray(jax.jit(m.apply)({"params": params}, jnp.asarray(ids, jnp.int32))) for m in (model, plain))
    assert ref.scaled_diff(got, want) < (2e-2 if length == 5 else 5e-2)  # transformers' own bf16 at 40: 0.023
    assert ref.scaled_diff(got, want) <= 1.5 * ref.scaled_diff(xla, want) + 1e-3


@needs_gemm
def test_mapped_llava_logits_match_transformers(tmp_path):
    """A bf16 llava-hf directory loaded with every Linear weight (vision tower, projector, decoder, lm_head) left
    in the mapped file: image + text logits against transformers in float32 on the same weights."""
    hf = ref.llava(seed=8).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model, params = load_model(tmp_path, dtype="bfloat16")
    assert mapped_kernels(params) == 6 + 2 + 7 + 1  # vision layer, projector, decoder layer, lm_head
    ids, mask = ref.image_batch(model.cfg.num_image_tokens)
    images = ref.images_nhwc(2, ref.VISION["image_size"], seed=5)
    with torch.no_grad():
        want = hf.float()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                          pixel_values=ref.to_nchw(images)).logits.numpy()
    plain = build_model(dataclasses.replace(model.cfg, text=dataclasses.replace(model.cfg.text, cpu_matvec=False)))
    copied = load_model(tmp_path, dtype="bfloat16", mapped=False)[1]
    run = lambda m, p: np.asarray(jax.jit(m.apply)({"params": p}, ids.astype(np.int32), pixel_values=images,
                                                    attention_mask=mask))
    got, xla = run(model, params), run(plain, copied)
    real = mask.astype(bool)
    assert ref.scaled_diff(got[real], want[real]) <= 1.5 * ref.scaled_diff(xla[real], want[real]) + 1e-3
    assert ref.scaled_diff(got[real], want[real]) < 5e-2


def mapped_kernels(params) -> int:
    return len(cpu_kernels.mapped_leaves(params))


WEIGHT_COPY = re.compile(r"= bf16\[(\d+,)?(128,344|344,128|128,128|128,\d+)\]\S* (dynamic-slice|copy|fusion|custom-call)")


@pytest.mark.parametrize("mapped", [False, True])
def test_decode_reads_weights_in_place(bf16_llama, mapped):
    """The compiled decode passes each stacked weight (or each mapped matrix's address) to a kernel: no per-layer
    slice or copy of a weight matrix."""
    _, path = bf16_llama
    model, params = load_model(path, dtype="bfloat16", mapped=mapped)
    if mapped and not mapped_kernels(params):
        pytest.skip("this CPU has no AVX512-BF16: nothing is mapped")
    engine = Engine(model, params)
    arrays = engine.device_batch(collate([[5, 6, 7, 8]], None, 1, 0, None, None))
    eos = jnp.asarray([2], jnp.int32)
    state = prefill(model, params, *arrays, eos, jax.random.PRNGKey(0), max_new_tokens=6, sampling=SamplingConfig())
    hlo = decode.lower(model, params, state, eos, jnp.int32(6), sampling=SamplingConfig()).compile().as_text()
    target = cpu_kernels.MAPPED_TARGET if mapped else cpu_kernels.TARGET
    assert hlo.count(f'custom_call_target="{target}"') == 8  # q k v o gate up down, lm_head
    assert [line for line in hlo.splitlines() if WEIGHT_COPY.search(line)] == []


@needs_gemm
def test_mapped_params_refuse_a_mesh(bf16_llama):
    """Addresses in one host's memory cannot be sharded: an engine on a mesh says so instead of failing inside."""
    _, path = bf16_llama
    model, params = load_model(path, dtype="bfloat16")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(ValueError, match="load with mesh="):
        Engine(model, params, mesh=mesh)


@needs_gemm
def test_mapped_params_refuse_to_be_saved(bf16_llama, tmp_path):
    """Addresses are not weights: saving mapped params as an Orbax checkpoint or an HF directory is refused."""
    _, path = bf16_llama
    model, params = load_model(path, dtype="bfloat16")
    with pytest.raises(ValueError, match="mapped=False"):
        checkpoint.save_params(tmp_path / "ckpt", params, model.cfg)
    with pytest.raises(ValueError, match="mapped=False"):
        hf_convert.save_hf_llama(model, params, tmp_path / "hf")
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "hf").exists()


@needs_gemm
@pytest.mark.parametrize("mapped", [False, True])
def test_prefill_reads_weights_in_place(bf16_llama, mapped):
    """A prefill-sized forward passes each stacked weight (or mapped matrix's address) to the GEMM: no per-layer
    slice or copy of a weight matrix."""
    _, path = bf16_llama
    model, params = load_model(path, dtype="bfloat16", mapped=mapped)
    ids = jnp.asarray(np.random.default_rng(1).integers(3, ref.IMAGE_TOKEN, size=(2, 40)), jnp.int32)
    hlo = jax.jit(model.apply).lower({"params": params}, ids).compile().as_text()
    target = cpu_kernels.MAPPED_TARGET if mapped else cpu_kernels.GEMM_TARGET
    assert hlo.count(f'custom_call_target="{target}"') == 8  # q k v o gate up down, lm_head
    assert hlo.count(f'custom_call_target="{cpu_kernels.ATTENTION_TARGET}"') == 1  # in the layer loop
    assert [line for line in hlo.splitlines() if WEIGHT_COPY.search(line)] == []


@pytest.mark.parametrize("mapped", [False, True])
def test_no_gradient_through_the_kernel(bf16_llama, mapped):
    """The kernel path is inference-only: differentiating it (or mapped weights' addresses) is an error, not a
    silent zero gradient."""
    _, path = bf16_llama
    model, params = load_model(path, dtype="bfloat16", mapped=mapped)
    ids = jnp.asarray([[5, 6]], jnp.int32)
    with pytest.raises(Exception, match="(?i)differentiat|jvp|transpose|uint32"):
        jax.grad(lambda p: model.apply({"params": p}, ids).sum())(params)


def test_build_failure_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("XLLAVA_KERNEL_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="false"):
        cpu_kernels.build(compiler="/bin/false")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape, transpose", [((3, 40, 40), True), ((3, 40, 40), False), ((3, 24, 56), True),
                                              ((2, 67, 131), True), ((1, 64, 96), True), ((24, 56), True),
                                              ((600, 300), False), ((72, 1000), True)])
def test_load_stack_equals_numpy(dtype, shape, transpose):
    """Each layer gets its own host matrix, transposed when asked: square ones, shapes off every block size (odd
    rows and columns, 32-row line blocks with remainders), aligned 64-byte lines (streamed stores) and not."""
    rng = np.random.default_rng(sum(shape))
    slot = shape[1:] if len(shape) == 3 else shape
    layers = shape[0] if len(shape) == 3 else 1
    hosts = [np.asarray(jnp.asarray(rng.normal(size=slot[::-1] if transpose else slot), dtype)) for _ in range(layers)]
    want = np.stack([h.T if transpose else h for h in hosts]).reshape(shape)
    got = cpu_kernels.load_stack(hosts, shape, transpose=transpose)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_load_stack_refuses_mismatched_host_arrays():
    with pytest.raises(ValueError, match="does not fit"):
        cpu_kernels.load_stack([np.zeros((4, 6), np.float32)] * 2, (2, 4, 6), transpose=True)
    with pytest.raises(ValueError, match="does not fit"):
        cpu_kernels.load_stack([np.zeros((4, 6), np.float32), np.zeros((4, 6), np.int32)], (2, 4, 6), transpose=False)
    with pytest.raises(ValueError, match="3 host matrices"):
        cpu_kernels.load_stack([np.zeros((4, 6), np.float32)] * 3, (2, 4, 6), transpose=False)
    with pytest.raises(ValueError, match="release"):
        cpu_kernels.load_stack([np.zeros((4, 6), np.float32)], (4, 6), transpose=False, release="free")


def _file_rss() -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("RssFile:"))


@pytest.mark.parametrize("release", ["keep", "unmap", "evict"])
def test_load_stack_releases_mapped_pages_and_the_file_reads_back(tmp_path, release):
    """From a read-only file mapping: the copy is right; unless kept, this process no longer maps the file's pages
    (its file-backed resident memory does not grow by the input); the file still reads back whole."""
    import mmap
    data = np.random.default_rng(0).normal(size=(4, 512, 1024)).astype(np.float32)
    (tmp_path / "w.bin").write_bytes(data.tobytes())
    with open(tmp_path / "w.bin", "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    hosts = [np.frombuffer(mapped, np.float32, 512 * 1024, i * data[0].nbytes).reshape(512, 1024) for i in range(4)]
    before = _file_rss()
    got = cpu_kernels.load_stack(hosts, (4, 1024, 512), transpose=True, release=release)
    np.testing.assert_array_equal(np.asarray(got), data.transpose(0, 2, 1))
    growth = _file_rss() - before
    assert growth >= data.nbytes if release == "keep" else growth < data.nbytes / 4, growth
    np.testing.assert_array_equal(np.stack(hosts), data)  # mapped again from the file


@pytest.mark.parametrize("memory", ["ample", "tight"])
def test_float32_checkpoint_loads_exactly(tmp_path, monkeypatch, memory):
    """A float32 HF LLaMA through the kernel loader (square and non-square matrices): logits as transformers';
    with host memory too tight for params and page cache together, read pages leave the cache as they go."""
    hf = ref.llama(seed=7, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
    hf.save_pretrained(tmp_path)
    dropped = []
    release = StateDict.release
    monkeypatch.setattr(StateDict, "release", lambda self, key: dropped.append(self.drop_cache) or release(self, key))
    if memory == "tight":
        monkeypatch.setattr(hf_convert, "available_memory", lambda: 1024)
    model, params = load_model(tmp_path)
    assert model.cfg.param_dtype == "float32"
    ids = np.random.default_rng(2).integers(3, ref.IMAGE_TOKEN, size=(1, 6))
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    got = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(ids, jnp.int32)))
    assert ref.scaled_diff(got, want) < 1e-5
    assert dropped and set(dropped) == {memory == "tight"}
