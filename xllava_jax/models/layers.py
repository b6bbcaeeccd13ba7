"""Building blocks shared by the vision and language towers: dense layers with logical
axes, attention masks and attention, remat policies, and the scanned layer stack."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

INIT_STD = 0.02
LAYER_AXIS = "layers"

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
REMAT_POLICIES = {
    "none": None,  # no rematerialisation: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls
}


@dataclasses.dataclass(frozen=True)
class ExecConfig:
    """How a tower runs (not what it computes): dtypes, attention kernel, scan and remat."""

    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of parameters
    attention: str = "xla"  # jax.nn.dot_product_attention implementation: xla | cudnn
    scan_layers: bool = True  # nn.scan over layers (False: same params, fully unrolled loop)
    remat_policy: str = "none"  # one of REMAT_POLICIES or a jax.checkpoint_policies name

    def validate(self) -> None:
        """Raise ValueError naming any unsupported setting."""
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"{field}={getattr(self, field)!r}; expected one of {sorted(DTYPES)}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r}; expected one of {ATTENTION_IMPLEMENTATIONS}")
        remat_policy(self.remat_policy)

    @property
    def jnp_dtype(self) -> Any:
        return DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self) -> Any:
        return DTYPES[self.param_dtype]


def remat_policy(name: str) -> Callable | None:
    """The jax.checkpoint policy called `name` (None for no remat)."""
    if name in REMAT_POLICIES:
        return REMAT_POLICIES[name]
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None:
        raise ValueError(f"remat_policy={name!r}; expected one of {sorted(REMAT_POLICIES)} "
                         "or a jax.checkpoint_policies name")
    return policy


def dense(features: int, axes: tuple[str, str], cfg: ExecConfig, *, use_bias: bool, name: str) -> nn.Dense:
    """A Dense layer whose kernel [in, out] and bias carry logical axis names."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=cfg.jnp_dtype,
        param_dtype=cfg.jnp_param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[-1:]),
        name=name,
    )


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical axis names (no-op without a mesh)."""
    return nn.with_logical_constraint(x, tuple(axes))


def make_attention_mask(
    num_queries: int,
    key_mask: jax.Array | None = None,
    *,
    num_keys: int | None = None,
    segment_ids: jax.Array | None = None,
    query_offset: jax.Array | int = 0,
    causal: bool = True,
) -> jax.Array | None:
    """Boolean [B|1, 1, T, S] mask: causal over absolute slots, key padding, and packed segments.

    Query i sits at key slot `query_offset + i` (the KV-cache write index when decoding).
    `key_mask` [B, S] marks real keys; `segment_ids` [B, T] (T == S, no cache) keeps
    attention inside each packed sample, 0 being padding.
    """
    num_keys = num_keys if num_keys is not None else (key_mask.shape[-1] if key_mask is not None else num_queries)
    mask = None
    if causal:
        q_slot = query_offset + jnp.arange(num_queries)[:, None]
        mask = (jnp.arange(num_keys)[None, :] <= q_slot)[None, None]
    if key_mask is not None:
        keys = key_mask.astype(bool)[:, None, None, :]
        mask = keys if mask is None else mask & keys
    if segment_ids is not None:
        same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] != 0)
        mask = same[:, None] if mask is None else mask & same[:, None]
    return mask


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, implementation: str) -> jax.Array:
    """Scaled dot-product attention, [B, T, N, D] x [B, S, K, D] -> [B, T, N, D] (GQA when K < N)."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def layer_stack(layer: type[nn.Module], cfg: ExecConfig, num_layers: int, broadcast_args: int, name: str) -> nn.Module:
    """`layer` repeated `num_layers` times with params stacked on a leading 'layers' axis.

    The layer is built as layer(cfg) and called as
    layer(carry, per_layer_input, *broadcast) -> (carry, per_layer_output).
    With cfg.scan_layers False the loop is fully unrolled (same parameter layout, so
    checkpoints work either way).
    """
    policy = remat_policy(cfg.remat_policy)
    if policy is not None:
        layer = nn.remat(layer, policy=policy, prevent_cse=not cfg.scan_layers)
    scanned = nn.scan(
        layer,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0,) + (nn.broadcast,) * broadcast_args,
        length=num_layers,
        unroll=1 if cfg.scan_layers else num_layers,
        metadata_params={nn.PARTITION_NAME: LAYER_AXIS},
    )
    return scanned(cfg, name=name)
