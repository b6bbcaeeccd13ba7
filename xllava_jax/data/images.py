"""Image loading and CLIP preprocessing (LLaVA `pad` = expand to square with the mean colour), NHWC float32."""

from __future__ import annotations

import io
import os

import numpy as np
from etils import epath
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOR = tuple(int(m * 255) for m in CLIP_MEAN)  # (122, 116, 104)
# uint8 value -> normalized float32, per channel: (v / 255 - mean) / std computed in float64 once.
_LUT = ((np.arange(256, dtype=np.float64)[:, None] / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
        ).astype(np.float32).T.copy()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of `image`; transparency is composited on white (as transformers' convert_to_rgb does)."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def expand_to_square(image: Image.Image, fill: tuple[int, int, int] = PAD_COLOR) -> Image.Image:
    """Paste `image` centred on a square canvas of colour `fill` (LLaVA's expand2square)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the shortest side is `size` (longest side truncated like transformers)."""
    w, h = image.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return image if new == (w, h) else image.resize(new, Image.BICUBIC)


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """Centre `size` x `size` crop of an HWC array (image at least `size` on both sides)."""
    h, w = array.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return array[top:top + size, left:left + size]


def normalize(array: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 (x / 255 - CLIP_MEAN) / CLIP_STD (per-channel lookup table)."""
    out = np.empty(array.shape, np.float32)
    for c in range(3):
        np.take(_LUT[c], array[..., c], out=out[..., c])
    return out


def preprocess(image: Image.Image, size: int = 336, pad: bool = True) -> np.ndarray:
    """CLIP-normalized HWC float32 [size, size, 3] of a PIL image; `pad` squares it with the mean colour first."""
    image = to_rgb(image)
    if pad:
        image = expand_to_square(image)
    image = resize_shortest_side(image, size)
    return normalize(center_crop(np.asarray(image), size))


def open_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Open and fully decode an image from a path (local or cloud via etils) or from encoded bytes."""
    data = source if isinstance(source, bytes) else epath.Path(source).read_bytes()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def image_path(image: str, image_root: str | None) -> str:
    """The full path of a record's image (relative paths joined to `image_root`)."""
    return os.fspath(epath.Path(image_root) / image) if image_root else image
