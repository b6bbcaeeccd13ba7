"""LLaVA: CLIP vision tower -> projector -> LLaMA decoder, images spliced in at the
image-token positions (transformers' LlavaForConditionalGeneration)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xllava_jax.models.clip import CLIPVisionConfig, CLIPVisionTransformer
from xllava_jax.models.llama import Llama, LlamaConfig
from xllava_jax.models.projector import PROJECTOR_TYPES, Projector

SELECT_STRATEGIES = ("default", "full")  # default drops the CLS token, full keeps it


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """A LLaVA model: its two towers, the projector and the image token."""

    vision: CLIPVisionConfig = CLIPVisionConfig()
    text: LlamaConfig = LlamaConfig()
    projector_type: str = "mlp2x_gelu"
    image_token_id: int = 32000  # id repeated num_image_tokens times per image in input_ids
    pad_token_id: int | None = 32001
    vision_feature_layer: int = -2  # index into CLIP hidden states (HF convention)
    vision_feature_select_strategy: str = "default"

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_patches + (self.vision_feature_select_strategy == "full")

    def validate(self) -> None:
        """Raise ValueError naming any inconsistent setting."""
        self.vision.validate()
        self.text.validate()
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type={self.projector_type!r}; expected one of {PROJECTOR_TYPES}")
        if self.vision_feature_select_strategy not in SELECT_STRATEGIES:
            raise ValueError(f"vision_feature_select_strategy={self.vision_feature_select_strategy!r}; "
                             f"expected one of {SELECT_STRATEGIES}")
        if not -self.vision.num_hidden_layers - 1 <= self.vision_feature_layer <= self.vision.num_hidden_layers:
            raise ValueError(f"vision_feature_layer={self.vision_feature_layer} is out of range for "
                             f"{self.vision.num_hidden_layers} vision layers")
        if not 0 <= self.image_token_id < self.text.vocab_size:
            raise ValueError(f"image_token_id={self.image_token_id} is outside the vocabulary "
                             f"(text.vocab_size={self.text.vocab_size})")


def splice_image_features(embeds: jax.Array, input_ids: jax.Array, features: jax.Array,
                          image_token_id: int) -> jax.Array:
    """Replace image-token embeddings [B, T, H] by image features [num_images, N, H].

    Image tokens take features in reading order over the whole batch (row by row), as
    transformers' masked_scatter does; trailing unused images are padding.
    """
    is_image = input_ids == image_token_id
    flat = features.reshape(-1, features.shape[-1])
    index = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
    gathered = jnp.take(flat, jnp.clip(index, 0, flat.shape[0] - 1), axis=0)
    return jnp.where(is_image[..., None], gathered.astype(embeds.dtype), embeds)


def check_image_tokens(input_ids: Any, num_images: int, tokens_per_image: int, image_token_id: int) -> None:
    """Raise ValueError if the image tokens in concrete `input_ids` do not match the images given."""
    counts = (np.asarray(input_ids) == image_token_id).sum(axis=-1)
    for row, count in enumerate(counts):
        if count % tokens_per_image:
            raise ValueError(f"row {row} of input_ids has {count} image tokens (id {image_token_id}); "
                             f"each image needs exactly {tokens_per_image}")
    needed = int(counts.sum()) // tokens_per_image
    if needed > num_images:
        raise ValueError(f"input_ids hold image tokens for {needed} images but pixel_values has {num_images}")


class Llava(nn.Module):
    """LlavaForConditionalGeneration. Params: vision_tower, projector, language_model."""

    cfg: LlavaConfig

    def setup(self):
        cfg = self.cfg
        self.vision_tower = CLIPVisionTransformer(cfg.vision)
        self.projector = Projector(cfg.projector_type, cfg.text.hidden_size, cfg.text)
        self.language_model = Llama(cfg.text)

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """Projected features [num_images, N, H] of NHWC images."""
        hidden = self.vision_tower(pixel_values, self.cfg.vision_feature_layer)
        if self.cfg.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]
        return self.projector(hidden)

    def embed(self, input_ids: jax.Array, pixel_values: jax.Array | None = None) -> jax.Array:
        """Token embeddings with image features spliced in at the image-token positions."""
        cfg = self.cfg
        if not isinstance(input_ids, jax.core.Tracer):
            check_image_tokens(input_ids, 0 if pixel_values is None else pixel_values.shape[0],
                               cfg.num_image_tokens, cfg.image_token_id)
        embeds = self.language_model.embed(input_ids)
        if pixel_values is None:
            return embeds
        return splice_image_features(embeds, input_ids, self.image_features(pixel_values), cfg.image_token_id)

    def __call__(self, input_ids, pixel_values=None, attention_mask=None, positions=None, segment_ids=None,
                 cache=None, cache_index=0):
        """Logits [B, T, V] (and the updated KV cache when one is given).

        `pixel_values` [num_images, S, S, 3] (NHWC, CLIP-normalized) holds one image per run
        of N image tokens, in the order the runs appear reading the batch row by row; rows
        without image tokens are text-only and take no image. Extra trailing images are
        ignored, so a jitted step can use a fixed number of image slots.
        """
        return self.language_model.forward_embeds(self.embed(input_ids, pixel_values), attention_mask, positions,
                                                   segment_ids, cache, cache_index)
