"""Tiny transformers (PyTorch) reference models with random weights, saved as HF directories."""

from __future__ import annotations

import numpy as np
import torch
import transformers

TEXT = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=5000.0, max_position_embeddings=256, rms_norm_eps=1e-5)
VISION = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4, image_size=56,
              patch_size=14, projection_dim=32)
IMAGE_TOKEN = 120
PAD_TOKEN = 121


def scaled_diff(got, want) -> float:
    """max |got - want| relative to max(1, max |want|): float32 round-off is ~1e-6 of the scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(1.0, np.max(np.abs(want))))


TOLERANCE = 1e-5  # on scaled_diff, for float32 parity with transformers


def randomize(model: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    """Overwrite every parameter with N(0, std^2) (norm weights around 1) so errors are visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)
    return model.eval()


def llama(seed: int = 0, **overrides) -> transformers.LlamaForCausalLM:
    """A random LlamaForCausalLM (GQA, rope_theta 5000 by default)."""
    cfg = transformers.LlamaConfig(**{**TEXT, **overrides})
    return randomize(transformers.LlamaForCausalLM(cfg), seed)


def clip_vision(seed: int = 0, **overrides) -> transformers.CLIPVisionModel:
    """A random CLIPVisionModel."""
    cfg = transformers.CLIPVisionConfig(**{**VISION, **overrides})
    return randomize(transformers.CLIPVisionModel(cfg), seed)


def llava(seed: int = 0, text: dict | None = None, vision: dict | None = None, std: float = 0.1,
          **overrides) -> transformers.LlavaForConditionalGeneration:
    """A random LlavaForConditionalGeneration with image token IMAGE_TOKEN (weights N(0, std^2), see randomize)."""
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**{**VISION, **(vision or {})}).to_dict(),
        text_config=transformers.LlamaConfig(**{**TEXT, **(text or {})}).to_dict(),
        **{"image_token_index": IMAGE_TOKEN, **overrides})
    cfg.pad_token_id = PAD_TOKEN
    return randomize(transformers.LlavaForConditionalGeneration(cfg), seed, std)


def images_nhwc(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Random CLIP-normalized-looking images, NHWC float32."""
    return np.random.default_rng(seed).normal(size=(count, size, size, 3)).astype(np.float32)


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """NHWC NumPy -> NCHW torch (the boundary between our images and HF's)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def image_batch(num_patches: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """input_ids [3, T] and attention_mask: rows 0 and 2 hold an image, row 1 is text-only, row 2 is right-padded."""
    rng = np.random.default_rng(seed)
    t = num_patches + 9
    ids = rng.integers(3, IMAGE_TOKEN, size=(3, t))
    ids[0, 2:2 + num_patches] = IMAGE_TOKEN
    ids[2, 1:1 + num_patches] = IMAGE_TOKEN
    mask = np.ones((3, t), np.int64)
    mask[2, -4:] = 0
    ids[2, -4:] = PAD_TOKEN
    return ids.astype(np.int64), mask
