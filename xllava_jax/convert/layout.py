"""The mapping between our parameter paths and Hugging Face state-dict keys.

Our module names follow transformers', so a key is derived from the Flax path: a prefix
table per model (MaxText-style) maps the leading path, stacked `layers` are split into
`layers.{i}`, and a small hook per leaf kind moves between layouts (torch Linear is
[out, in], Flax Dense [in, out]; torch Conv2d is [out, in, kh, kw], Flax [kh, kw, in, out]).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

Path = tuple[str, ...]

# (flax path prefix, HF key prefix); first match wins. A prefix ending in "layers" is stacked.
LLAMA_PREFIXES: list[tuple[Path, str]] = [
    (("lm_head",), "lm_head"),
    (("layers",), "model.layers"),
    ((), "model"),
]
CLIP_PREFIXES = {  # transformers < 5 keeps the vision_model wrapper in CLIPVisionModel/CLIPModel
    "wrapped": [(("layers",), "vision_model.encoder.layers"), ((), "vision_model")],
    "bare": [(("layers",), "encoder.layers"), ((), "")],
}
# Key layouts of LlavaForConditionalGeneration on disk: "llava-hf" (the hub checkpoints,
# transformers < 4.52; every version loads it), "transformers-4.52" (4.52 to 4.x saves),
# "transformers-5" (5.x saves).
LLAVA_PREFIXES = {
    "llava-hf": [
        (("language_model", "lm_head"), "language_model.lm_head"),
        (("language_model", "layers"), "language_model.model.layers"),
        (("language_model",), "language_model.model"),
        (("vision_tower", "layers"), "vision_tower.vision_model.encoder.layers"),
        (("vision_tower",), "vision_tower.vision_model"),
        (("projector",), "multi_modal_projector"),
    ],
    "transformers-4.52": [
        (("language_model", "lm_head"), "lm_head"),
        (("language_model", "layers"), "model.language_model.layers"),
        (("language_model",), "model.language_model"),
        (("vision_tower", "layers"), "model.vision_tower.vision_model.encoder.layers"),
        (("vision_tower",), "model.vision_tower.vision_model"),
        (("projector",), "model.multi_modal_projector"),
    ],
    "transformers-5": [
        (("language_model", "lm_head"), "language_model.lm_head"),
        (("language_model", "layers"), "language_model.model.layers"),
        (("language_model",), "language_model.model"),
        (("vision_tower", "layers"), "vision_tower.encoder.layers"),
        (("vision_tower",), "vision_tower"),
        (("projector",), "multi_modal_projector"),
    ],
}
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def to_hf_layout(path: Path, value: np.ndarray) -> np.ndarray:
    """Our array for one layer -> the HF tensor layout."""
    if path[-1] == "kernel" and value.ndim == 2:
        return value.T
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    return value


def from_hf_layout(path: Path, value: np.ndarray) -> np.ndarray:
    """An HF tensor -> our array layout for one layer."""
    if path[-1] == "kernel" and value.ndim == 2:
        return value.T
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value


def transposes_matrices(path: Path) -> bool:
    """Whether from_hf_layout transposes a 2-D HF tensor at `path` (a Linear weight into a Dense kernel)."""
    return from_hf_layout(path, np.empty((1, 2))).shape == (2, 1)


def detect_layout(keys: set[str], abstract: dict, layouts: dict[str, list[tuple[Path, str]]]) -> str:
    """Name of the layout whose keys best cover `abstract`'s parameters (first of the best)."""
    def hits(prefixes):
        return sum(hf_key(p, prefixes, 0) in keys for p, _ in flatten(abstract))
    return max(layouts, key=lambda name: hits(layouts[name]))


def hf_key(path: Path, prefixes: list[tuple[Path, str]], layer: int | None = None) -> str:
    """HF key of a Flax leaf path (with the layer index for stacked leaves)."""
    for flax_prefix, hf_prefix in prefixes:
        if path[: len(flax_prefix)] == flax_prefix:
            rest = list(path[len(flax_prefix):])
            rest[-1] = LEAF_NAMES.get(rest[-1], rest[-1])
            head = [hf_prefix] if hf_prefix else []
            if is_stacked(path, prefixes):
                head.append(str(layer or 0))
            return ".".join(head + rest)
    raise KeyError(f"no HF name for parameter {'/'.join(path)}")


def is_stacked(path: Path, prefixes: list[tuple[Path, str]]) -> bool:
    """Whether a leaf is stacked over layers (its matching prefix ends in 'layers')."""
    for flax_prefix, _ in prefixes:
        if path[: len(flax_prefix)] == flax_prefix:
            return bool(flax_prefix) and flax_prefix[-1] == "layers"
    return False


def flatten(tree: dict, prefix: Path = ()) -> Iterator[tuple[Path, object]]:
    """(path, leaf) pairs of a nested dict, in sorted key order."""
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            yield from flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def unflatten(items: Iterator[tuple[Path, object]]) -> dict:
    """Inverse of flatten."""
    tree: dict = {}
    for path, value in items:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def hf_tensors(params: dict, prefixes: list[tuple[Path, str]]) -> Iterator[tuple[str, np.ndarray]]:
    """Our params as (HF key, HF-layout array) pairs; stacked layers are split."""
    for path, value in flatten(params):
        value = np.asarray(value)
        if is_stacked(path, prefixes):
            for i in range(value.shape[0]):
                yield hf_key(path, prefixes, i), to_hf_layout(path, value[i])
        else:
            yield hf_key(path, prefixes), to_hf_layout(path, value)
