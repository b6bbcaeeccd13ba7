"""KV-cache generation against transformers' generate and against our own full (uncached) forward."""

import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch

import hf_reference as ref
from xllava_jax.convert import hf as convert
from xllava_jax.infer.generate import Engine, GenerationConfig, generate
from xllava_jax.infer.sampling import SamplingConfig

MAX_NEW = 12


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen_llama")
    ref.llama(seed=11).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen_llava")
    ref.llava(seed=12).save_pretrained(path)
    return path


def left_pad(prompts, pad=ref.PAD_TOKEN):
    """torch input_ids and attention_mask of left-padded prompts."""
    length = max(map(len, prompts))
    ids = np.full((len(prompts), length), pad, np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):], mask[i, length - len(p):] = p, 1
    return torch.from_numpy(ids), torch.from_numpy(mask), length


def hf_greedy(hf, prompts, eos, pixel_values=None):
    """transformers' greedy generate, each row cut at its first EOS."""
    ids, mask, length = left_pad(prompts)
    extra = {} if pixel_values is None else {"pixel_values": ref.to_nchw(pixel_values)}
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                          eos_token_id=eos, pad_token_id=ref.PAD_TOKEN, **extra)
    rows = [row[length:].tolist() for row in out]
    return [r[:r.index(eos)] if eos in r else r for r in rows]


def text_prompts(seed, lengths):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, ref.IMAGE_TOKEN, size=n).tolist() for n in lengths]


def eos_inside(rows):
    """An id some reference row generates mid-way (so EOS handling is exercised), not its first token."""
    return rows[1][MAX_NEW // 2]


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_call", [0, 1, 5])
def test_llama_greedy_equals_transformers_generate_with_left_padding_and_eos(llama_dir, steps_per_call):
    hf = ref.llama(seed=11)
    model, params = convert.load_hf_llama(llama_dir)
    prompts = text_prompts(0, [9, 3, 14, 6])
    eos = eos_inside(hf_greedy(hf, prompts, eos=-1))
    want = hf_greedy(hf, prompts, eos)
    cfg = GenerationConfig(max_new_tokens=MAX_NEW, eos_ids=(eos,), batch_size=3, steps_per_call=steps_per_call)
    got = generate(model, params, None, prompts, config=cfg)
    assert [g.tokens for g in got] == want
    assert any(len(w) < MAX_NEW for w in want) and any(len(w) == MAX_NEW for w in want)
    assert [g.finish_reason for g in got] == ["eos" if len(w) < MAX_NEW else "length" for w in want]


def llava_case(num_image_tokens):
    """Prompts: row 0 with an image, row 1 text-only, row 2 with an image and a longer text (left padding)."""
    rng = np.random.default_rng(3)
    text = lambda n: rng.integers(3, ref.IMAGE_TOKEN, size=n).tolist()  # noqa: E731
    prompts = [text(2) + [ref.IMAGE_TOKEN] * num_image_tokens + text(4), text(7),
               text(1) + [ref.IMAGE_TOKEN] * num_image_tokens + text(9)]
    pixels = ref.images_nhwc(2, ref.VISION["image_size"], seed=8)
    return prompts, [[pixels[0]], [], [pixels[1]]], pixels


@pytest.mark.slow
def test_llava_greedy_equals_transformers_generate_with_and_without_images(llava_dir):
    hf = ref.llava(seed=12)
    model, params = convert.load_hf_llava(llava_dir)
    prompts, images, pixels = llava_case(model.cfg.num_image_tokens)
    eos = eos_inside(hf_greedy(hf, prompts, -1, pixels))
    want = hf_greedy(hf, prompts, eos, pixels)
    got = generate(model, params, None, prompts, images, GenerationConfig(max_new_tokens=MAX_NEW, eos_ids=(eos,),
                                                                          batch_size=4))
    assert [g.tokens for g in got] == want
    # one at a time (batch 1, no padding) gives the same tokens
    for prompt, imgs, w in zip(prompts, images, want):
        single = generate(model, params, None, [prompt], [imgs], GenerationConfig(MAX_NEW, eos_ids=(eos,),
                                                                                  batch_size=1))
        assert single[0].tokens == w


@pytest.mark.slow
def test_cached_decoding_equals_full_forward_token_by_token(llava_dir):
    """Every generated token is the argmax of our uncached forward over prompt + tokens so far."""
    model, params = convert.load_hf_llava(llava_dir)
    prompts, images, pixels = llava_case(model.cfg.num_image_tokens)
    got = generate(model, params, None, prompts, images, GenerationConfig(max_new_tokens=MAX_NEW, eos_ids=(),
                                                                          batch_size=3))
    seqs = [p + g.tokens for p, g in zip(prompts, got)]
    length = max(map(len, seqs))
    ids = np.asarray([s + [ref.PAD_TOKEN] * (length - len(s)) for s in seqs], np.int32)  # right padding
    mask = (np.arange(length)[None] < np.asarray([len(s) for s in seqs])[:, None]).astype(np.int32)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, ids, pixel_values=pixels, attention_mask=mask))
    for row, (prompt, g) in enumerate(zip(prompts, got)):
        assert logits[row, len(prompt) - 1:len(prompt) - 1 + MAX_NEW].argmax(-1).tolist() == g.tokens


@pytest.mark.slow
def test_sampling_is_seeded_and_top_k_1_is_greedy(llama_dir):
    model, params = convert.load_hf_llama(llama_dir)
    prompts = text_prompts(1, [5, 8])
    base = GenerationConfig(max_new_tokens=MAX_NEW, eos_ids=(), batch_size=2)
    greedy = generate(model, params, None, prompts, config=base)
    hot = SamplingConfig(temperature=1.5, top_p=0.95, repetition_penalty=1.3)
    a = generate(model, params, None, prompts, config=GenerationConfig(**{**base.__dict__, "sampling": hot, "seed": 1}))
    b = generate(model, params, None, prompts, config=GenerationConfig(**{**base.__dict__, "sampling": hot, "seed": 1}))
    c = generate(model, params, None, prompts, config=GenerationConfig(**{**base.__dict__, "sampling": hot, "seed": 2}))
    assert [g.tokens for g in a] == [g.tokens for g in b] != [g.tokens for g in c]
    k1 = SamplingConfig(temperature=0.7, top_k=1)
    assert [g.tokens for g in generate(model, params, None, prompts, config=GenerationConfig(
        **{**base.__dict__, "sampling": k1}))] == [g.tokens for g in greedy]


@pytest.mark.slow
def test_repetition_penalty_equals_transformers(llama_dir):
    hf = ref.llama(seed=11)
    model, params = convert.load_hf_llama(llama_dir)
    prompts = text_prompts(2, [6])  # one row: no padding, whose ids transformers would also penalise
    ids, mask, length = left_pad(prompts)
    with torch.no_grad():
        want = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                           repetition_penalty=1.8, eos_token_id=None, pad_token_id=0)[0, length:].tolist()
    cfg = GenerationConfig(MAX_NEW, SamplingConfig(repetition_penalty=1.8), eos_ids=(), batch_size=1)
    assert generate(model, params, None, prompts, config=cfg)[0].tokens == want


def test_prompt_image_mismatch_names_the_prompt(llava_dir):
    model, params = convert.load_hf_llava(llava_dir)
    prompts, images, _ = llava_case(model.cfg.num_image_tokens)
    with pytest.raises(ValueError, match="prompt 1 has 0 image tokens .* but 1 image"):
        Engine(model, params).generate(prompts, [images[0], images[0], images[2]], GenerationConfig(eos_ids=()))


SHARDED = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from xllava_jax.convert import hf as convert
    from xllava_jax.infer.generate import generate, GenerationConfig
    from xllava_jax.sharding import make_mesh
    from test_infer_generate import llava_case
    model, params = convert.load_hf_llava({path!r})
    prompts, images, _ = llava_case(model.cfg.num_image_tokens)
    cfg = GenerationConfig(max_new_tokens=6, eos_ids=(), batch_size=4)
    plain = generate(model, params, None, prompts, images, cfg)
    for mesh in (make_mesh(data=1, fsdp=1, tensor=4), make_mesh(data=2, fsdp=1, tensor=2)):
        sharded = generate(model, params, None, prompts, images, cfg, mesh=mesh)
        assert [g.tokens for g in sharded] == [g.tokens for g in plain], mesh
    print("OK")
""")


@pytest.mark.slow
def test_sharded_generation_on_four_devices_equals_single_device(llava_dir):
    """Params placed with the training shardings (tensor-parallel heads/MLP/vocab) on 4 CPU devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    code = SHARDED.format(tests=os.path.dirname(__file__), path=str(llava_dir))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def cache_copies(hlo: str, shapes: set) -> list[str]:
    """Instructions of a compiled HLO module that copy or transpose an array of one of `shapes` (unit dims dropped,
    dims as a sorted tuple): copies, transposes and fusions named after them."""
    found = []
    for line in hlo.splitlines():
        head = line.split(", metadata=")[0]
        match = re.search(r"%(\S+) = [a-z0-9]+\[([0-9,]*)\]\{[^}]*\} ([a-z\-]+)\(", head)
        if match is None:
            continue
        name, dims, op = match.groups()
        if op in ("copy", "transpose") or (op == "fusion" and ("copy" in name or "transpose" in name)):
            if tuple(sorted(int(d) for d in dims.split(",") if d and int(d) != 1)) in shapes:
                found.append(head.strip())
    return found


def test_decode_step_updates_the_cache_in_place(llama_dir):
    """The compiled decode loop writes each new key/value into the carried [layers, ...] cache and reads a layer's
    keys without rebuilding the cache per layer or transposing it per step."""
    from xllava_jax.infer.batching import collate
    from xllava_jax.infer.generate import kv_segments, prefill, decode

    model, params = convert.load_hf_llama(llama_dir)
    cfg, batch, prompt_len, max_new = model.cfg, 2, 7, 40
    engine = Engine(model, params)
    arrays = engine.device_batch(collate(text_prompts(0, [prompt_len] * batch), None, batch, 0, None, None))
    eos = jax.numpy.asarray([2], jax.numpy.int32)
    state = prefill(model, params, *arrays, eos, jax.random.PRNGKey(0), max_new_tokens=max_new,
                    sampling=SamplingConfig())
    hlo = decode.lower(model, params, state, eos, jax.numpy.int32(max_new),
                       sampling=SamplingConfig()).compile().as_text()
    padded = state.key_mask.shape[1] - max_new  # the prompt's length bucket
    views = [padded + end for end in kv_segments(max_new)]
    dims = [(batch, cfg.num_key_value_heads, s, cfg.dim_per_head) for s in views]
    shapes = {tuple(sorted(d)) for d in dims} | {tuple(sorted((cfg.num_hidden_layers,) + d)) for d in dims}
    assert len(shapes) == 2 * len(views) and len(views) > 1
    assert cache_copies(hlo, shapes) == []
