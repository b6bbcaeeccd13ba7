"""The training forward pass: row-local image splicing, so every array of a batch shards by row.

The model's own `Llava.embed` takes images in reading order over the whole batch; a sharded or
micro-batched step needs each row's images next to the row. Here `pixel_values` is
[B, k, S, S, 3]: row r's image runs take slots (r, 0..k-1) in order, unused slots are zeros.
The result equals `Llava.__call__` on the same samples (tests/test_train_step.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Outputs(NamedTuple):
    """What the losses and metrics read from one forward pass."""

    logits: jax.Array  # float32 [B, T, V]
    embeds: jax.Array  # decoder input embeddings [B, T, H] (image features spliced in)
    image_features: jax.Array | None  # projected features [B, k * N, H], or None without images


def splice_rows(embeds: jax.Array, input_ids: jax.Array, features: jax.Array, image_token_id: int) -> jax.Array:
    """Replace row r's image-token embeddings by its own features [B, k * N, H], in order."""
    is_image = input_ids == image_token_id
    index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
    gathered = jax.vmap(lambda f, i: jnp.take(f, i, axis=0))(features, index)
    return jnp.where(is_image[..., None], gathered.astype(embeds.dtype), embeds)


def _llava(module: Any, input_ids, pixel_values, attention_mask, positions, segment_ids) -> Outputs:
    """Llava forward with row-local splicing (a method function for Module.apply)."""
    embeds = module.language_model.embed(input_ids)
    features = None
    if pixel_values is not None:
        b, k = pixel_values.shape[:2]
        features = module.image_features(pixel_values.reshape(b * k, *pixel_values.shape[2:]))
        features = features.reshape(b, k * features.shape[1], features.shape[2])
        embeds = splice_rows(embeds, input_ids, features, module.cfg.image_token_id)
    hidden, _ = module.language_model.decode(embeds, attention_mask, positions, segment_ids)
    return Outputs(module.language_model.logits(hidden), embeds, features)


def _llama(module: Any, input_ids, pixel_values, attention_mask, positions, segment_ids) -> Outputs:
    """Llama forward (a method function for Module.apply); pixel_values must be None."""
    embeds = module.embed(input_ids)
    hidden, _ = module.decode(embeds, attention_mask, positions, segment_ids)
    return Outputs(module.logits(hidden), embeds, None)


def forward(model: Any, params: dict, batch: dict, is_llava: bool) -> Outputs:
    """Outputs of `model` on a training batch (keys of the batch contract; pixel_values per-row slots)."""
    return model.apply({"params": params}, batch["input_ids"], batch.get("pixel_values") if is_llava else None,
                       batch["attention_mask"], batch["positions"], batch["segment_ids"],
                       method=_llava if is_llava else _llama)


def row_slots(input_ids: np.ndarray, pixel_values: np.ndarray, image_token_id: int, tokens_per_image: int,
              slots: int) -> np.ndarray:
    """Pipeline pixels [B * k, ...] in batch reading order -> per-row slots [B, slots, ...] (host side)."""
    runs = (np.asarray(input_ids) == image_token_id).sum(axis=1) // tokens_per_image
    if runs.max(initial=0) > slots:
        raise ValueError(f"a row holds {runs.max()} images but data.max_images_per_row={slots}")
    out = np.zeros((len(runs), slots, *pixel_values.shape[1:]), pixel_values.dtype)
    start = np.concatenate([[0], np.cumsum(runs)[:-1]])
    for r, (s, n) in enumerate(zip(start, runs)):
        out[r, :n] = pixel_values[s:s + n]
    return out
