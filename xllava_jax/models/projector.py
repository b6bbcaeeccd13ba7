"""Vision-to-language projectors: LLaVA-1.5's `mlp2x_gelu` and the original `linear`."""

from __future__ import annotations

import flax.linen as nn
import jax

from xllava_jax.models.layers import ExecConfig, dense

PROJECTOR_TYPES = ("mlp2x_gelu", "linear")


class Projector(nn.Module):
    """Maps vision features [..., Dv] to "visual word" embeddings [..., H].

    mlp2x_gelu: linear_1, exact GELU, linear_2 (transformers' LlavaMultiModalProjector);
    linear: linear_1 only.
    """

    kind: str
    out_features: int
    cfg: ExecConfig

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        if self.kind not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type={self.kind!r}; expected one of {PROJECTOR_TYPES}")
        x = dense(self.out_features, ("vision_embed", "embed"), self.cfg, use_bias=True, name="linear_1")(
            features.astype(self.cfg.jnp_dtype))
        if self.kind == "mlp2x_gelu":
            x = dense(self.out_features, ("embed", "embed_out"), self.cfg, use_bias=True, name="linear_2")(
                nn.gelu(x, approximate=False))
        return x
