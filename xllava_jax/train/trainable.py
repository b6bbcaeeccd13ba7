"""Trainable vs frozen parameters: a run differentiates and optimizes only the trainable subtree.

Groups are the top-level keys of a LLaVA's params (vision_tower, projector, language_model); a bare
LLaMA decoder's whole tree is the group `language_model`.
"""

from __future__ import annotations

from typing import Any

LLAMA_GROUP = "language_model"


def group_tree(params: dict, is_llava: bool) -> dict:
    """Params keyed by group: a LLaVA's as they are, a LLaMA's under 'language_model'."""
    return params if is_llava else {LLAMA_GROUP: params}


def ungroup_tree(grouped: dict, is_llava: bool) -> dict:
    """Inverse of group_tree."""
    return grouped if is_llava else grouped[LLAMA_GROUP]


def split(params: dict, groups: tuple[str, ...], is_llava: bool) -> tuple[dict, dict]:
    """(trainable, frozen): the params' groups divided by membership in `groups`."""
    tree = group_tree(params, is_llava)
    missing = [g for g in groups if g not in tree]
    if missing:
        raise ValueError(f"train.trainable names {missing}, but the model's parameter groups are {sorted(tree)}")
    return ({k: v for k, v in tree.items() if k in groups}, {k: v for k, v in tree.items() if k not in groups})


def merge(trainable: dict, frozen: dict, is_llava: bool) -> dict:
    """The full params from the two halves of split."""
    return ungroup_tree({**frozen, **trainable}, is_llava)


def with_dtype(tree: dict, dtype: str) -> dict:
    """`tree` (arrays, NumPy arrays or ShapeDtypeStructs) stored as `dtype` ('' leaves it as it is)."""
    import jax

    from xllava_jax.models.layers import DTYPES
    if not dtype:
        return tree
    to = DTYPES[dtype]

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, to, sharding=x.sharding)
        return x if x.dtype == to else x.astype(to)
    return jax.tree_util.tree_map(leaf, tree)


def count(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or shape structs."""
    import math

    import jax
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))
