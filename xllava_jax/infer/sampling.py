"""Choosing the next token from logits: repetition penalty, temperature, top-k, top-p, greedy.

The order and semantics follow transformers' logits processors (RepetitionPenaltyLogitsProcessor,
then TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper), applied to float32 logits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen (static under jit: one compilation per setting)."""

    temperature: float = 0.0  # 0: greedy (argmax); otherwise sample from softmax(logits / temperature)
    top_k: int = 0  # keep the k most likely tokens (0: off)
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p (1: off)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the output (1: off)

    def validate(self) -> None:
        """Raise ValueError naming any out-of-range setting."""
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """Divide positive (multiply negative) logits of tokens marked in `seen` [B, V] by `penalty`."""
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalized, logits)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Logits with everything below the k-th largest set to -inf (ties with the k-th are kept)."""
    kth = jax.lax.top_k(logits, min(k, logits.shape[-1]))[0][..., -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Logits outside the nucleus set to -inf: the most likely tokens whose cumulative probability first reaches p."""
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted = drop_sorted.at[..., 0].set(False)  # always keep the most likely token
    drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    return jnp.where(drop, NEG_INF, logits)


def process_logits(logits: jax.Array, seen: jax.Array | None, cfg: SamplingConfig) -> jax.Array:
    """Logits [B, V] after the repetition penalty and, when sampling, temperature, top-k and top-p."""
    logits = logits.astype(jnp.float32)
    if cfg.repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.greedy:
        return logits
    logits = logits / cfg.temperature
    if cfg.top_k:
        logits = top_k_filter(logits, cfg.top_k)
    if cfg.top_p < 1.0:
        logits = top_p_filter(logits, cfg.top_p)
    return logits


def choose_tokens(logits: jax.Array, rng: jax.Array, seen: jax.Array | None, cfg: SamplingConfig) -> jax.Array:
    """Next token ids [B] (int32) from logits [B, V]."""
    logits = process_logits(logits, seen, cfg)
    if cfg.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def mark_seen(seen: jax.Array, tokens: jax.Array) -> jax.Array:
    """`seen` [B, V] with each row's token in `tokens` [B] marked."""
    return seen.at[jnp.arange(tokens.shape[0]), tokens].set(True)
