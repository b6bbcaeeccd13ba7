"""Our Flax models reproduce transformers' PyTorch CLIP / LLaMA / LLaVA on the same weights."""

import numpy as np
import pytest
import torch

import hf_reference as ref
from xllava_jax.convert import hf as convert
from xllava_jax.models import init_cache




@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    ref.llama(seed=1).save_pretrained(path)
    return path


@pytest.mark.parametrize("scan_layers", [True, False])
def test_llama_logits_match_transformers_with_gqa_padding_and_rope_theta(llama_dir, scan_layers):
    hf = ref.llama(seed=1)
    model, params = convert.load_hf_llama(llama_dir, scan_layers=scan_layers)
    assert model.cfg.num_key_value_heads == 2 and model.cfg.rope_theta == 5000.0
    rng = np.random.default_rng(0)
    ids = rng.integers(0, ref.TEXT["vocab_size"], size=(3, 13))
    mask = np.ones_like(ids)
    mask[1, -5:] = 0
    mask[2, -1:] = 0
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    got = model.apply({"params": params}, ids.astype(np.int32), attention_mask=mask.astype(np.int32))
    real = mask.astype(bool)
    assert ref.scaled_diff(got[real], want[real]) < ref.TOLERANCE
    assert np.abs(want).max() > 1.0  # the reference is not trivially small


@pytest.mark.slow
def test_llama_kv_cache_reproduces_full_forward_token_by_token(llama_dir):
    model, params = convert.load_hf_llama(llama_dir)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, ref.TEXT["vocab_size"], size=(2, 12)).astype(np.int32)
    full = model.apply({"params": params}, ids)
    max_len, prefill = 16, 5
    cache = init_cache(model.cfg, batch=2, max_len=max_len)
    key_mask = np.ones((2, max_len), np.int32)
    logits, cache = model.apply({"params": params}, ids[:, :prefill], attention_mask=key_mask, cache=cache,
                                cache_index=0)
    steps = [logits]
    for i in range(prefill, ids.shape[1]):
        logits, cache = model.apply({"params": params}, ids[:, i:i + 1], attention_mask=key_mask, cache=cache,
                                    cache_index=i)
        steps.append(logits)
    assert ref.scaled_diff(np.concatenate(steps, axis=1), full) < ref.TOLERANCE


def test_llama_tied_embeddings(tmp_path):
    hf = ref.llama(seed=3, tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)
    model, params = convert.load_hf_llama(tmp_path)
    assert "lm_head" not in params
    ids = np.arange(10).reshape(1, 10)
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert ref.scaled_diff(model.apply({"params": params}, ids.astype(np.int32)), want) < ref.TOLERANCE


@pytest.mark.slow
def test_clip_every_hidden_state_matches_transformers(tmp_path):
    hf = ref.clip_vision(seed=2)
    hf.save_pretrained(tmp_path)
    model, params = convert.load_hf_clip(tmp_path)
    images = ref.images_nhwc(2, ref.VISION["image_size"])
    with torch.no_grad():
        out = hf(pixel_values=ref.to_nchw(images), output_hidden_states=True)
    _, _, hidden = model.apply({"params": params}, images, method=model.run)
    assert len(out.hidden_states) == hidden.shape[0] == ref.VISION["num_hidden_layers"] + 1
    for i, want in enumerate(out.hidden_states):
        assert ref.scaled_diff(hidden[i], want.numpy()) < ref.TOLERANCE, f"hidden state {i}"
        selected = model.apply({"params": params}, images, i - len(out.hidden_states))
        assert ref.scaled_diff(selected, want.numpy()) < ref.TOLERANCE, f"feature layer {i - len(out.hidden_states)}"
    pooled = model.apply({"params": params}, images, method=model.pooled)
    assert ref.scaled_diff(pooled, out.pooler_output.numpy()) < ref.TOLERANCE


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava")
    ref.llava(seed=4).save_pretrained(path)
    return path


def llava_inputs(num_patches):
    ids, mask = ref.image_batch(num_patches)
    images = ref.images_nhwc(2, ref.VISION["image_size"], seed=5)  # rows 0 and 2 have an image
    return ids, mask, images


def torch_llava_logits(hf, ids, mask, images):
    with torch.no_grad():
        return hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                  pixel_values=ref.to_nchw(images)).logits.numpy()


@pytest.mark.slow
def test_llava_logits_match_transformers_on_mixed_image_and_text_rows(llava_dir):
    hf = ref.llava(seed=4)
    model, params = convert.load_hf_llava(llava_dir)
    ids, mask, images = llava_inputs(model.cfg.num_image_tokens)
    want = torch_llava_logits(hf, ids, mask, images)
    got = model.apply({"params": params}, ids.astype(np.int32), pixel_values=images, attention_mask=mask)
    real = mask.astype(bool)
    assert ref.scaled_diff(got[real], want[real]) < ref.TOLERANCE
    # a trailing unused image slot (fixed shapes under jit) changes nothing: a leak of the zero image into a row
    # would move logits by their own scale; the extra slot is another program (another batch shape), whose
    # matmuls XLA may block differently (6.9e-7 on AVX-512 CPUs), so round-off is allowed, scaled to the logits
    padded = np.concatenate([images, np.zeros_like(images[:1])])
    got_padded = model.apply({"params": params}, ids.astype(np.int32), pixel_values=padded, attention_mask=mask)
    assert ref.scaled_diff(got_padded, got) < ref.TOLERANCE


def test_llava_rejects_wrong_image_token_count(llava_dir):
    model, params = convert.load_hf_llava(llava_dir)
    ids, mask, images = llava_inputs(model.cfg.num_image_tokens)
    ids[0, 2] = 5  # one image token short in row 0
    with pytest.raises(ValueError, match="row 0 .* image tokens"):
        model.apply({"params": params}, ids.astype(np.int32), pixel_values=images, attention_mask=mask)
    ids, mask, images = llava_inputs(model.cfg.num_image_tokens)
    with pytest.raises(ValueError, match="2 images but pixel_values has 1"):
        model.apply({"params": params}, ids.astype(np.int32), pixel_values=images[:1], attention_mask=mask)
