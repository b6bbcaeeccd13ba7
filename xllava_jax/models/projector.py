"""Vision-to-language projectors: LLaVA-1.5's `mlp2x_gelu` and the original `linear`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xllava_jax.models.layers import ExecConfig, dense

PROJECTOR_TYPES = ("mlp2x_gelu", "linear")

# PyTorch nn.Linear's default init, as LLaVA's projector gets it: kaiming_uniform(a=sqrt(5)) weights,
# i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
TORCH_LINEAR_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias(fan_in: int):
    """Initializer U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch nn.Linear's bias)."""
    bound = fan_in ** -0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class Projector(nn.Module):
    """Maps vision features [..., Dv] to "visual word" embeddings [..., H].

    mlp2x_gelu: linear_1, exact GELU, linear_2 (transformers' LlavaMultiModalProjector);
    linear: linear_1 only. Initialised as PyTorch nn.Linear (LLaVA's projector).
    """

    kind: str
    out_features: int
    cfg: ExecConfig

    def _linear(self, x: jax.Array, axes: tuple[str, str], name: str) -> jax.Array:
        """One nn.Linear-initialised layer."""
        return dense(self.out_features, axes, self.cfg, use_bias=True, name=name, kernel_init=TORCH_LINEAR_KERNEL,
                     bias_init=torch_linear_bias(x.shape[-1]))(x)

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        if self.kind not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type={self.kind!r}; expected one of {PROJECTOR_TYPES}")
        x = self._linear(features.astype(self.cfg.jnp_dtype), ("vision_embed", "embed"), "linear_1")
        if self.kind == "mlp2x_gelu":
            x = self._linear(nn.gelu(x, approximate=False), ("embed", "embed_out"), "linear_2")
        return x
