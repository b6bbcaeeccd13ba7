"""At real width: a 2-layer slice of LLaVA-1.5-7B (LLaMA-2-7B + CLIP ViT-L/14-336) in float32 reproduces
transformers' LlavaForConditionalGeneration on one image + prompt of the real length (576 image tokens)."""

import gc

import jax
import numpy as np
import pytest
import torch
import transformers

import hf_reference as ref
from xllava_jax.convert import hf as convert

TOLERANCE = 1e-4  # on ref.scaled_diff: float32 sums over 4096-11008 wide rows round more than the tiny models'
IMAGE_TOKEN, PAD_TOKEN = 32000, 32001  # llava-hf's ids in the 32064-token vocabulary


def llava_7b_slice(layers: int, seed: int) -> transformers.LlavaForConditionalGeneration:
    """LLaVA-1.5-7B's widths (LLaMA-2-7B, CLIP-L/14-336, mlp2x_gelu) with `layers` layers per tower, random
    N(0, 0.02^2) weights (the checkpoints' scale: activations stay as large as a real model's)."""
    vision = transformers.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers,
                                           num_attention_heads=16, image_size=336, patch_size=14,
                                           projection_dim=768)
    text = transformers.LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                                    num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=32,
                                    max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0)
    cfg = transformers.LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                   image_token_index=IMAGE_TOKEN, projector_hidden_act="gelu",
                                   vision_feature_layer=-2, vision_feature_select_strategy="default")
    cfg.pad_token_id = PAD_TOKEN
    torch.manual_seed(seed)
    return ref.randomize(transformers.LlavaForConditionalGeneration(cfg), seed, std=0.02)


def image_prompt(num_image_tokens: int, seed: int = 0) -> np.ndarray:
    """input_ids [1, 617]: BOS, 4 text tokens, the image's tokens, 36 text tokens (a chat turn's shape)."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[1], rng.integers(3, IMAGE_TOKEN, 4), np.full(num_image_tokens, IMAGE_TOKEN),
                          rng.integers(3, IMAGE_TOKEN, 36)])
    return ids[None].astype(np.int64)


@pytest.mark.slow
def test_llava_7b_width_two_layer_slice_matches_transformers_in_float32(tmp_path):
    hf = llava_7b_slice(layers=2, seed=7)
    hf.save_pretrained(tmp_path)
    ids = image_prompt(576)
    images = ref.images_nhwc(1, 336, seed=8)
    assert ids.shape == (1, 617)
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids), pixel_values=ref.to_nchw(images)).logits.numpy()
    del hf  # one side's weights in memory at a time
    gc.collect()

    model, params = convert.load_hf_llava(tmp_path)
    assert (model.cfg.text.hidden_size, model.cfg.vision.image_size, model.cfg.num_image_tokens) == (4096, 336, 576)
    got = jax.jit(model.apply)({"params": params}, ids.astype(np.int32), pixel_values=images,
                               attention_mask=np.ones_like(ids, np.int32))
    got = np.asarray(got)
    assert np.abs(want).max() > 1.0  # the reference is not trivially small
    assert ref.scaled_diff(got, want) < TOLERANCE
