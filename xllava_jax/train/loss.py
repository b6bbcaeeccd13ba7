"""Losses and their metrics: token cross-entropy, the cross-modal consistency loss, the modality gap.

Cross-entropy is shifted (logits at t predict labels at t + 1) and summed here; the step divides by
the trained-token count of the whole global batch, so gradient accumulation equals one big batch.

Cross-modal consistency (LRM-LLaVA's regularizer made explicit; weight `train.consistency_weight`):
for every image i in the batch, v_i = mean over its N positions of the projected image features
(the visual-word embeddings the LLM reads) and a_i = mean of the input token embeddings of the
trained (label != -100) content tokens of the sample holding the image (its caption or answers; the batch's
`content_mask` leaves out template text and `</s>`), under stop_gradient unless
`train.consistency_text_grad` (so by default the loss moves the image side, not the word embeddings);
L_cons = mean_i (1 - cos(v_i, a_i)) over images whose sample has a trained content token.

Modality gap (eval metric, LRM-LLaVA Figure 5): with v_i as above and t_i = mean input embedding of
the content text tokens of image i's sample (questions and answers, not the system prompt or role names),
gap = || mean_i v_i/|v_i| - mean_i t_i/|t_i| ||_2 (distance between the centroids of the unit-normalised image
and text features) and mean_i cos(v_i, t_i). Batches without `content_mask` count every text token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xllava_jax.data.labels import IGNORE_INDEX


def token_sums(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Summed shifted cross-entropy, trained-token count and correct argmax predictions."""
    logits, targets = logits[:, :-1], labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = jnp.where(mask, targets, 0)
    logz = jax.nn.logsumexp(logits, axis=-1)
    nll = logz - jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    correct = jnp.argmax(logits, axis=-1) == safe
    return {"nll": jnp.sum(nll * mask), "tokens": jnp.sum(mask).astype(jnp.float32),
            "correct": jnp.sum(correct & mask).astype(jnp.float32)}


def image_slots(input_ids: jax.Array, segment_ids: jax.Array, image_token_id: int, tokens_per_image: int,
                slots: int) -> tuple[jax.Array, jax.Array]:
    """(valid [B, k], segment [B, k]): which image slots hold an image, and the packed sample each is in."""
    is_image = input_ids == image_token_id
    run = (jnp.cumsum(is_image, axis=1) - 1) // tokens_per_image
    onehot = is_image[..., None] & (run[..., None] == jnp.arange(slots))
    segment = jnp.max(jnp.where(onehot, segment_ids[..., None], 0), axis=1)
    return jnp.any(onehot, axis=1), segment


def _pooled(features: jax.Array, tokens_per_image: int) -> jax.Array:
    """Mean over each image's N positions: [B, k * N, H] -> float32 [B, k, H]."""
    b, kn, h = features.shape
    return features.reshape(b, kn // tokens_per_image, tokens_per_image, h).astype(jnp.float32).mean(axis=2)


def _masked_mean(embeds: jax.Array, segment_ids: jax.Array, segment: jax.Array, mask: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """Mean embedding [B, k, H] over tokens of each slot's segment where `mask`, and the token counts [B, k]."""
    sel = (mask[..., None] & (segment_ids[..., None] == segment[:, None, :])).astype(jnp.float32)  # [B, T, k]
    total = jnp.einsum("btk,bth->bkh", sel, embeds.astype(jnp.float32))
    n = sel.sum(axis=1)
    return total / jnp.maximum(n, 1.0)[..., None], n


def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity over the last axis."""
    return jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-6)


def content(batch: dict) -> jax.Array:
    """Bool [B, T]: the turns' own text tokens (all tokens when the batch has no content_mask)."""
    return batch["content_mask"] > 0 if "content_mask" in batch else jnp.ones(batch["input_ids"].shape, bool)


def answer_tokens(batch: dict) -> jax.Array:
    """Bool [B, T]: the tokens a_i averages (trained content tokens)."""
    return (batch["labels"] != IGNORE_INDEX) & content(batch)


def consistency_sums(out_embeds: jax.Array, features: jax.Array, batch: dict, image_token_id: int,
                     tokens_per_image: int, text_grad: bool = False) -> dict[str, jax.Array]:
    """Summed (1 - cos(v_i, a_i)) over images with trained content tokens, and their count (see module doc)."""
    slots = features.shape[1] // tokens_per_image
    valid, segment = image_slots(batch["input_ids"], batch["segment_ids"], image_token_id, tokens_per_image, slots)
    text = out_embeds if text_grad else jax.lax.stop_gradient(out_embeds)
    answer, n = _masked_mean(text, batch["segment_ids"], segment, answer_tokens(batch))
    use = valid & (n > 0)
    return {"cons": jnp.sum(jnp.where(use, 1.0 - _cos(_pooled(features, tokens_per_image), answer), 0.0)),
            "cons_images": jnp.sum(use).astype(jnp.float32)}


def modality_sums(out_embeds: jax.Array, features: jax.Array, batch: dict, image_token_id: int,
                  tokens_per_image: int) -> dict[str, jax.Array]:
    """Sums for the modality gap: unit image / text centroids' numerators, cosine sum, image count."""
    slots = features.shape[1] // tokens_per_image
    valid, segment = image_slots(batch["input_ids"], batch["segment_ids"], image_token_id, tokens_per_image, slots)
    text_tok = (batch["attention_mask"] > 0) & (batch["input_ids"] != image_token_id) & content(batch)
    text, n = _masked_mean(out_embeds, batch["segment_ids"], segment, text_tok)
    image = _pooled(features, tokens_per_image)
    use = (valid & (n > 0)).astype(jnp.float32)[..., None]
    unit = lambda x: x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)  # noqa: E731
    return {"gap_image": jnp.sum(unit(image) * use, axis=(0, 1)), "gap_text": jnp.sum(unit(text) * use, axis=(0, 1)),
            "gap_cos": jnp.sum(_cos(image, text) * use[..., 0]), "gap_images": jnp.sum(use)}


def modality_gap(sums: dict) -> dict[str, float]:
    """The modality-gap metrics from accumulated modality_sums."""
    import numpy as np
    n = max(float(sums["gap_images"]), 1.0)
    gap = np.linalg.norm(np.asarray(sums["gap_image"]) / n - np.asarray(sums["gap_text"]) / n)
    return {"modality_gap": float(gap), "modality_cos": float(sums["gap_cos"]) / n}
