"""CLIP vision transformer (transformers' CLIPVisionModel) on NHWC images."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from xllava_jax.models.layers import INIT_STD, ExecConfig, attend, constrain, dense, layer_stack

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(ExecConfig):
    """Sizes of a CLIP ViT (defaults: ViT-L/14 at 336 px) and how it runs."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        """Raise ValueError naming any inconsistent setting."""
        super().validate()
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"vision hidden_act={self.hidden_act!r}; expected one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"vision hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")


def layer_norm(cfg: CLIPVisionConfig, name: str) -> nn.LayerNorm:
    """LayerNorm with two-pass variance (as torch computes it) and logical axes."""
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)), name=name)


class Embeddings(nn.Module):
    """Patch convolution, class token and learned position embeddings."""

    cfg: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        cfg = self.cfg
        patches = nn.Conv(
            cfg.hidden_size, (cfg.patch_size, cfg.patch_size), strides=cfg.patch_size, padding="VALID",
            use_bias=False, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(INIT_STD),
                                                     ("conv_h", "conv_w", "conv_in", "embed")),
            name="patch_embedding")(pixel_values.astype(cfg.jnp_dtype))
        b = patches.shape[0]
        patches = patches.reshape(b, -1, cfg.hidden_size)
        cls = self.param("class_embedding", nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), ("embed",)),
                         (cfg.hidden_size,), cfg.jnp_param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(cfg.jnp_dtype), (b, 1, cfg.hidden_size)), patches], axis=1)
        positions = nn.Embed(
            cfg.num_patches + 1, cfg.hidden_size, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), ("vision_positions", "embed")),
            name="position_embedding")(jnp.arange(cfg.num_patches + 1))
        return x + positions[None]


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with biased projections."""

    cfg: CLIPVisionConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        b, t, d = x.shape
        nh = cfg.num_attention_heads
        q, k, v = (dense(d, ("embed", "q_heads"), cfg, use_bias=True, name=n)(x).reshape(b, t, nh, d // nh)
                   for n in ("q_proj", "k_proj", "v_proj"))
        h = attend(q, k, v, None, cfg.attention, cfg.dtype, cfg.cpu_matvec).reshape(b, t, d)
        return dense(d, ("q_heads", "embed"), cfg, use_bias=True, name="out_proj")(h)


class MLP(nn.Module):
    """fc1, activation (quick_gelu for CLIP), fc2."""

    cfg: CLIPVisionConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        h = dense(cfg.intermediate_size, ("embed", "mlp"), cfg, use_bias=True, name="fc1")(x)
        return dense(cfg.hidden_size, ("mlp", "embed"), cfg, use_bias=True, name="fc2")(ACTIVATIONS[cfg.hidden_act](h))


class EncoderLayer(nn.Module):
    """Pre-norm ViT block; a scan body: ((hidden, selected), layer_index, select) -> (carry, hidden).

    `selected` keeps the hidden state after layer `select`, so a feature layer can be read
    out without keeping every layer's activations.
    """

    cfg: CLIPVisionConfig

    @nn.compact
    def __call__(self, carry, layer_index, select):
        cfg = self.cfg
        x, selected = carry
        x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        x = x + SelfAttention(cfg, name="self_attn")(layer_norm(cfg, "layer_norm1")(x))
        x = x + MLP(cfg, name="mlp")(layer_norm(cfg, "layer_norm2")(x))
        selected = jnp.where(layer_index == select, x, selected)
        return (x, selected), x


class CLIPVisionTransformer(nn.Module):
    """CLIPVisionModel. Params: embeddings, pre_layrnorm, layers (stacked), post_layernorm."""

    cfg: CLIPVisionConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = layer_norm(cfg, "pre_layrnorm")
        self.layers = layer_stack(EncoderLayer, cfg, cfg.num_hidden_layers, broadcast_args=1, name="layers")
        self.post_layernorm = layer_norm(cfg, "post_layernorm")

    def __call__(self, pixel_values: jax.Array, feature_layer: int = -1):
        """Hidden state of one layer, [B, 1 + num_patches, D], indexed like HF hidden_states.

        Index 0 is the embeddings after pre_layrnorm, i is the output of layer i, and
        negative indices count from the end (-1 = last layer, -2 = LLaVA's choice).
        """
        hidden, selected, _ = self.run(pixel_values, feature_layer)
        return selected

    def run(self, pixel_values: jax.Array, feature_layer: int = -1):
        """(last hidden state, hidden state of `feature_layer`, all hidden states [L+1, B, T, D])."""
        n = self.cfg.num_hidden_layers
        index = feature_layer % (n + 1)
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        (last, selected), per_layer = self.layers((x, x), jnp.arange(1, n + 1), index)
        if self.is_initializing():
            self.post_layernorm(last[:, 0])
        return last, selected, jnp.concatenate([x[None], per_layer], axis=0)

    def pooled(self, pixel_values: jax.Array) -> jax.Array:
        """post_layernorm of the last layer's class token (CLIPVisionModel's pooler_output)."""
        last, _, _ = self.run(pixel_values)
        return self.post_layernorm(last[:, 0])
