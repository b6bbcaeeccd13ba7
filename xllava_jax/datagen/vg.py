"""Image selection from Visual Genome metadata (X-LLaVA section 3.2: 3 <= m <= 10 main objects).

Definition of a *main object* (documented in the README):
  1. Each VG object box is clipped to the image; its *area share* is box area / image area.
  2. A box is *salient* if its area share is at least ``min_area_share`` (default 1%); tiny
     boxes (distant signs, single leaves) are what the paper calls "exceedingly small or
     insignificant" objects.
  3. The object's name is its first VG name, lower-cased with whitespace collapsed.
  4. Main objects are the distinct names of salient boxes, ordered by the largest box of
     each name (biggest first). m is their number; an image is kept if
     ``min_objects <= m <= max_objects`` (default 3..10).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Any, Iterable, Mapping


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Thresholds for choosing images and their main objects."""

    min_objects: int = 3
    max_objects: int = 10
    min_area_share: float = 0.01
    max_images: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}..{self.max_objects}")
        if not 0.0 <= self.min_area_share < 1.0:
            raise ValueError(f"min_area_share must be in [0, 1), got {self.min_area_share}")


@dataclasses.dataclass(frozen=True)
class SelectedImage:
    """An image chosen for generation with its main objects."""

    image_id: int
    image: str  # path relative to the image root, e.g. "VG_100K/1.jpg"
    main_objects: tuple[str, ...]


def normalize_name(name: str) -> str:
    """Canonical object name: lower case, single spaces."""
    return " ".join(name.lower().split())


def area_share(obj: Mapping[str, Any], width: float, height: float) -> float:
    """Fraction of the image covered by the object's box, clipped to the image."""
    x0, y0 = max(0.0, float(obj["x"])), max(0.0, float(obj["y"]))
    x1 = min(float(width), float(obj["x"]) + float(obj["w"]))
    y1 = min(float(height), float(obj["y"]) + float(obj["h"]))
    return max(0.0, x1 - x0) * max(0.0, y1 - y0) / (float(width) * float(height))


def main_objects(objects: Iterable[Mapping[str, Any]], width: float, height: float,
                 min_area_share: float) -> tuple[str, ...]:
    """Distinct names of salient boxes, biggest box first (see the module docstring)."""
    best: dict[str, float] = {}
    for obj in objects:
        names = obj.get("names") or ([obj["name"]] if obj.get("name") else [])
        if not names:
            continue
        name, share = normalize_name(names[0]), area_share(obj, width, height)
        if name and share >= min_area_share and share > best.get(name, -1.0):
            best[name] = share
    return tuple(sorted(best, key=lambda n: (-best[n], n)))


def image_relpath(meta: Mapping[str, Any]) -> str:
    """Relative image path from VG image_data (``VG_100K/<id>.jpg`` style, from the URL)."""
    url = meta.get("url") or ""
    parts = [p for p in url.split("/") if p]
    if len(parts) >= 2 and parts[-2].startswith("VG_100K"):
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1] if parts else f"{meta['image_id']}.jpg"


def select_images(objects_json: list[Mapping[str, Any]], image_data: list[Mapping[str, Any]],
                  cfg: SelectionConfig) -> list[SelectedImage]:
    """Images with min_objects <= m <= max_objects main objects, shuffled by seed, capped at max_images."""
    metas = {int(m["image_id"]): m for m in image_data}
    chosen = []
    for entry in objects_json:
        image_id = int(entry["image_id"])
        meta = metas.get(image_id)
        if meta is None or not meta.get("width") or not meta.get("height"):
            continue
        names = main_objects(entry.get("objects", []), meta["width"], meta["height"], cfg.min_area_share)
        if cfg.min_objects <= len(names) <= cfg.max_objects:
            chosen.append(SelectedImage(image_id, image_relpath(meta), names))
    chosen.sort(key=lambda s: s.image_id)
    random.Random(cfg.seed).shuffle(chosen)
    return chosen[: cfg.max_images] if cfg.max_images else chosen


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file on failure."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read JSON file {path}: {e}") from e


def select_from_files(objects_path: str, image_data_path: str, cfg: SelectionConfig) -> list[SelectedImage]:
    """select_images over VG ``objects.json`` and ``image_data.json`` files."""
    return select_images(load_json(objects_path), load_json(image_data_path), cfg)
