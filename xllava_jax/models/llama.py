"""LLaMA-2 decoder (transformers' LlamaForCausalLM): RMSNorm, rotate-half RoPE, SwiGLU, GQA,
untied or tied LM head, and a functional KV cache for prefill + one-token decoding."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from xllava_jax.models.layers import INIT_STD, ExecConfig, MaskSpec, attend, constrain, dense, layer_stack

BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class LlamaConfig(ExecConfig):
    """Sizes of a LLaMA-2 decoder (defaults: LLaMA-2 7B) and how it runs."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v/o projections with bias
    mlp_bias: bool = False  # gate/up/down projections with bias

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """Raise ValueError naming any inconsistent setting."""
        super().validate()
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}; set head_dim")
        if self.dim_per_head % 2:
            raise ValueError(f"head dimension {self.dim_per_head} must be even for RoPE")


def float32_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None) -> jax.Array:
    """lax.dot_general accumulating and returning float32 (the LM-head logits: no bf16 rounding of logits)."""
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32)


class KVCache(NamedTuple):
    """Keys and values of every layer, [layers, B, kv_heads, max_len, head_dim]: each head's slots are contiguous,
    so attention reads a layer's keys without a transpose, and a decode step writes one slot per layer in place."""

    k: jax.Array
    v: jax.Array


CACHE_LENGTH_AXIS = 3  # the slot axis of KVCache arrays


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty KV cache for `batch` sequences of up to `max_len` tokens."""
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.dim_per_head)
    dtype = dtype or cfg.jnp_dtype
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def cache_write(cache: KVCache, layer: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array | int) -> KVCache:
    """The cache with keys and values [B, T, K, D] written at slots [index, index + T) of `layer` (an update of the
    whole [layers, ...] arrays, which XLA does in place when the cache is a loop carry)."""
    zero = jnp.zeros((), jnp.int32)
    start = (jnp.asarray(layer, jnp.int32), zero, zero, jnp.asarray(index, jnp.int32), zero)

    def put(buf: jax.Array, x: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_slice(buf, jnp.swapaxes(x, 1, 2)[None].astype(buf.dtype), start)

    return KVCache(put(cache.k, k), put(cache.v, v))


def cache_read(buf: jax.Array, layer: jax.Array) -> jax.Array:
    """One layer's cached keys or values as [B, max_len, K, D]."""
    return jnp.swapaxes(jax.lax.dynamic_index_in_dim(buf, layer, 0, keepdims=False), 1, 2)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, 1, head_dim] of rotate-half rotary embeddings at integer positions."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate [B, T, N, D] by the rotary angles (rotate-half layout, as HF checkpoints use)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)).astype(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm computed in float32, as LlamaRMSNorm."""

    eps: float
    cfg: ExecConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                           (x.shape[-1],), self.cfg.jnp_param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.cfg.jnp_dtype) * normed.astype(self.cfg.jnp_dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, optionally reading and writing a KV cache."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x, rope, mask, cache, layer, cache_index):
        cfg = self.cfg
        b, t, _ = x.shape
        hd, nq, nkv = cfg.dim_per_head, cfg.num_attention_heads, cfg.num_key_value_heads
        q = dense(nq * hd, ("embed", "q_heads"), cfg, use_bias=cfg.attention_bias, name="q_proj")(x)
        k = dense(nkv * hd, ("embed", "kv_heads"), cfg, use_bias=cfg.attention_bias, name="k_proj")(x)
        v = dense(nkv * hd, ("embed", "kv_heads"), cfg, use_bias=cfg.attention_bias, name="v_proj")(x)
        q = apply_rope(q.reshape(b, t, nq, hd), *rope)
        k = apply_rope(k.reshape(b, t, nkv, hd), *rope)
        v = v.reshape(b, t, nkv, hd)
        if cache is not None:
            cache = cache_write(cache, layer, k, v, cache_index)
            k, v = cache_read(cache.k, layer), cache_read(cache.v, layer)
        out = attend(q, k.astype(q.dtype), v.astype(q.dtype), mask, cfg.attention, cfg.dtype,
                     cfg.cpu_matvec).reshape(b, t, nq * hd)
        out = dense(cfg.hidden_size, ("q_heads", "embed"), cfg, use_bias=cfg.attention_bias, name="o_proj")(out)
        return out, cache


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        gate = dense(cfg.intermediate_size, ("embed", "mlp"), cfg, use_bias=cfg.mlp_bias, name="gate_proj")(x)
        up = dense(cfg.intermediate_size, ("embed", "mlp"), cfg, use_bias=cfg.mlp_bias, name="up_proj")(x)
        hidden = constrain(nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
        return dense(cfg.hidden_size, ("mlp", "embed"), cfg, use_bias=cfg.mlp_bias, name="down_proj")(hidden)


class DecoderLayer(nn.Module):
    """One pre-norm decoder block; a scan body: ((hidden, cache), layer index, *shared) -> ((hidden, cache), None).
    The whole cache (or None) is carried through the layers, each writing and reading its own slice."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, carry, layer, rope, mask, cache_index):
        cfg = self.cfg
        x, cache = carry
        x = constrain(x, BATCH_LENGTH_EMBED)
        h, cache = Attention(cfg, name="self_attn")(
            RMSNorm(cfg.rms_norm_eps, cfg, name="input_layernorm")(x), rope, mask, cache, layer, cache_index)
        x = x + h
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.rms_norm_eps, cfg, name="post_attention_layernorm")(x))
        return (x, cache), None


class Llama(nn.Module):
    """LlamaForCausalLM. Params: embed_tokens, layers (stacked), norm, lm_head (absent when tied)."""

    cfg: LlamaConfig

    def setup(self):
        cfg = self.cfg
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), ("vocab", "embed")))
        self.layers = layer_stack(DecoderLayer, cfg, cfg.num_hidden_layers, broadcast_args=3, name="layers")
        self.norm = RMSNorm(cfg.rms_norm_eps, cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = dense(cfg.vocab_size, ("embed", "vocab"), cfg, use_bias=False, name="lm_head",
                                 dot_general=float32_dot_general)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [B, T, H], looked up in the parameter dtype and then cast, so the table's gradient
        rows are summed in the parameter dtype (nn.Embed would cast the whole table to the compute dtype first)."""
        return jnp.take(self.embed_tokens.embedding, input_ids, axis=0).astype(self.cfg.jnp_dtype)

    def decode(self, embeds, attention_mask=None, positions=None, segment_ids=None, cache=None, cache_index=0):
        """Run the decoder stack on embeddings; returns (final-norm hidden [B, T, H], updated cache).

        Without a cache, keys are the T inputs and `attention_mask` is [B, T]. With a cache
        (see init_cache), the inputs are written at slots [cache_index, cache_index + T) and
        `attention_mask` is [B, max_len] over the cache slots (1 = real token).
        """
        b, t, _ = embeds.shape
        if positions is None:
            positions = jnp.broadcast_to(cache_index + jnp.arange(t), (b, t))
        rope = rope_cos_sin(positions, self.cfg.dim_per_head, self.cfg.rope_theta)
        num_keys = t if cache is None else cache.k.shape[CACHE_LENGTH_AXIS]
        mask = MaskSpec(attention_mask, segment_ids, cache_index, num_keys=num_keys, causal=True,
                        cached=cache is not None)
        layers = jnp.arange(self.cfg.num_hidden_layers, dtype=jnp.int32)
        (hidden, cache), _ = self.layers((embeds.astype(self.cfg.jnp_dtype), cache), layers, rope, mask, cache_index)
        return self.norm(hidden), cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Float32 next-token logits [..., V] from final hidden states."""
        if self.cfg.tie_word_embeddings:
            dt = self.cfg.jnp_dtype
            out = float32_dot_general(hidden.astype(dt), self.embed_tokens.embedding.astype(dt),
                                      (((hidden.ndim - 1,), (1,)), ((), ())))
        else:
            out = self.lm_head(hidden)
        return constrain(out, ("activation_batch", "activation_length", "activation_vocab")).astype(jnp.float32)

    def forward_embeds(self, embeds, attention_mask=None, positions=None, segment_ids=None, cache=None,
                       cache_index=0):
        """Logits [B, T, V] of input embeddings (and the updated cache when one is given)."""
        hidden, cache = self.decode(embeds, attention_mask, positions, segment_ids, cache, cache_index)
        logits = self.logits(hidden)
        return logits if cache is None else (logits, cache)

    def __call__(self, input_ids, attention_mask=None, positions=None, segment_ids=None, cache=None, cache_index=0):
        """Logits [B, T, V] (and the updated cache when one is given)."""
        return self.forward_embeds(self.embed(input_ids), attention_mask, positions, segment_ids, cache, cache_index)
