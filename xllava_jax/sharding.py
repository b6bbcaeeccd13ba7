"""Device mesh over (data, fsdp, tensor) and logical-axis rules mapping named array axes to it."""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch's rows are split over
Rules = Sequence[tuple[str, Any]]

# Logical axis -> mesh axes. Parameters are FSDP-sharded on their model dimension and
# tensor-parallel on heads / MLP / vocabulary; activations follow the batch.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vision_embed", None),
    ("embed_out", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("vision_positions", None),
    ("conv_h", None),
    ("conv_w", None),
    ("conv_in", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one size may be -1 (the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: only one of data/fsdp/tensor may be -1, got {sizes}")
    known = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if len(devices) % known:
            raise ValueError(f"mesh {sizes} does not divide the {len(devices)} devices")
        sizes[free[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"mesh data={sizes['data']} x fsdp={sizes['fsdp']} x tensor={sizes['tensor']} = "
                         f"{math.prod(sizes.values())} devices, but {len(devices)} are available")
    grid = np.asarray(devices).reshape(tuple(sizes[a] for a in MESH_AXES))
    return Mesh(grid, MESH_AXES)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def spec_for(logical: PartitionSpec, shape: Sequence[int], mesh: Mesh, rules: Rules) -> PartitionSpec:
    """Mesh PartitionSpec for one array; a dimension the mesh axes do not divide is replicated."""
    mesh_spec = nn.logical_to_mesh_axes(tuple(logical), rules)
    fitted = []
    for dim, axes in zip(shape, tuple(mesh_spec) + (None,) * (len(shape) - len(mesh_spec))):
        if axes is not None and dim % _axis_size(mesh, axes):
            log.warning("dimension of size %d is not divisible by mesh axes %s: replicated", dim, axes)
            axes = None
        fitted.append(axes)
    return PartitionSpec(*fitted)


def tree_shardings(logical_specs: Any, shapes: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings for a pytree, from its logical PartitionSpecs and shapes (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map(
        lambda spec, x: NamedSharding(mesh, spec_for(spec, x.shape, mesh, rules)),
        logical_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a batch array: leading axis over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, PartitionSpec())
