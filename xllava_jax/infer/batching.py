"""Static-shape prompt batches: left padding to a length bucket, positions, and image slots."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

Images = Sequence[np.ndarray]  # the images of one prompt, HWC float32 (CLIP-normalized), in token order


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """B prompts left-padded to a common length P, ready for prefill."""

    input_ids: np.ndarray  # int32 [B, P], pad id on the left
    mask: np.ndarray  # int32 [B, P], 1 = real token
    positions: np.ndarray  # int32 [B, P], 0.. for each row's real tokens (0 on padding)
    lengths: np.ndarray  # int32 [B], real tokens per row
    pixel_values: np.ndarray | None  # float32 [slots, S, S, 3]: the images in reading order, then zero slots


def bucket_length(n: int, buckets: Sequence[int] | None = None) -> int:
    """The padded length of an n-token prompt: the smallest bucket >= n; without buckets a power
    of two up to 512, then a multiple of 256 (few shapes, so few compilations)."""
    if buckets:
        fitting = [b for b in sorted(buckets) if b >= n]
        if not fitting:
            raise ValueError(f"prompt of {n} tokens is longer than the largest prompt bucket {max(buckets)}")
        return fitting[0]
    if n <= 512:
        return max(16, 1 << max(0, n - 1).bit_length())
    return 256 * math.ceil(n / 256)


def image_slots(images: Sequence[Images], batch: int) -> int:
    """Number of image slots of a batch: `batch` times the most images any prompt holds (at least one each)."""
    return batch * max([1, *(len(x) for x in images)])


def collate(prompts: Sequence[Sequence[int]], images: Sequence[Images] | None, batch: int, pad_id: int,
            buckets: Sequence[int] | None = None, image_shape: tuple[int, int, int] | None = None) -> PromptBatch:
    """Left-pad `prompts` (at most `batch`; missing rows are all padding but one token) into a PromptBatch.

    `images[i]` lists the images of prompt i (one per run of image tokens); with `image_shape`
    the batch carries image_slots(images, batch) slots, so the shape depends only on the batch size
    and the largest image count.
    """
    if not prompts or len(prompts) > batch:
        raise ValueError(f"collate needs 1..{batch} prompts, got {len(prompts)}")
    for i, p in enumerate(prompts):
        if not len(p):
            raise ValueError(f"prompt {i} is empty")
    rows = [list(map(int, p)) for p in prompts] + [[pad_id]] * (batch - len(prompts))
    lengths = np.asarray([len(r) for r in rows], np.int32)
    length = bucket_length(int(lengths.max()), buckets)
    ids = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), np.int32)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = row
        mask[i, length - len(row):] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    pixel_values = None
    if image_shape is not None:
        per_row = list(images or []) + [[]] * (batch - len(images or []))
        pixel_values = np.zeros((image_slots(per_row, batch), *image_shape), np.float32)
        flat = [img for row in per_row for img in row]
        if flat:
            pixel_values[:len(flat)] = np.stack(flat)
    return PromptBatch(ids, mask, positions, lengths, pixel_values)
