"""Sequences: truncation that never cuts an image-token run, splitting long text documents, greedy packing into
rows, and batch collation.

An *example* is a dict with int32 `input_ids`, `labels`, optional float32 `pixel_values` [n_images, S, S, 3],
and `id`. `collate` builds the batch contract documented in README "Data formats".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from xllava_jax.data.labels import IGNORE_INDEX


def cuts_image_run(ids: Sequence[int], cut: int, image_token_id: int) -> bool:
    """True when truncating `ids` to length `cut` would split a run of image tokens."""
    return 0 < cut < len(ids) and ids[cut - 1] == image_token_id and ids[cut] == image_token_id


def truncate(ids: list[int], labels: list[int], max_len: int, image_token_id: int) -> tuple[list[int], list[int]] | None:
    """Truncate to `max_len` text tokens; None when the cut would fall inside an image-token run."""
    if len(ids) <= max_len:
        return ids, labels
    if cuts_image_run(ids, max_len, image_token_id):
        return None
    return ids[:max_len], labels[:max_len]


def split_document(ids: list[int], labels: list[int], max_len: int) -> list[tuple[list[int], list[int]]]:
    """A text document `<s> ... </s>` longer than `max_len` as pieces of at most `max_len` tokens: the first as
    it starts, each later one `<s>` (untrained) + the next max_len - 1 tokens, so every token is trained once."""
    if len(ids) <= max_len:
        return [(ids, labels)]
    pieces = [(ids[:max_len], labels[:max_len])]
    for start in range(max_len, len(ids), max_len - 1):
        pieces.append(([ids[0], *ids[start:start + max_len - 1]], [IGNORE_INDEX, *labels[start:start + max_len - 1]]))
    return pieces


def num_images(example: dict) -> int:
    """Number of images an example carries (pixels, or the count when images are not loaded)."""
    pv = example.get("pixel_values")
    return example.get("num_images", 0) if pv is None else len(pv)


def fits(row: Sequence[dict], example: dict, max_len: int, max_images: int) -> bool:
    """Whether `example` can join `row` within `max_len` tokens and `max_images` images."""
    return (sum(len(e["input_ids"]) for e in row) + len(example["input_ids"]) <= max_len
            and sum(num_images(e) for e in row) + num_images(example) <= max_images)


def bucket_length(longest: int, buckets: Sequence[int], max_len: int) -> int:
    """The smallest of `buckets` that holds `longest` tokens (max_len when none does, or without buckets)."""
    return min([b for b in buckets if b >= longest], default=max_len)


def collate(rows: Sequence[Sequence[dict]], batch_size: int, max_len: int, pad_id: int,
            max_images_per_row: int, image_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Batch of `rows` (each a list of examples packed together), right-padded to [batch_size, max_len]."""
    shape = (batch_size, max_len)
    batch = {"input_ids": np.full(shape, pad_id, np.int32), "labels": np.full(shape, IGNORE_INDEX, np.int32),
             "attention_mask": np.zeros(shape, np.int32), "positions": np.zeros(shape, np.int32),
             "segment_ids": np.zeros(shape, np.int32), "content_mask": np.zeros(shape, np.int32)}
    pixels = np.zeros((batch_size * max_images_per_row, *image_shape), np.float32)
    n_img = 0
    for r, row in enumerate(rows):
        t = 0
        for s, ex in enumerate(row, 1):
            n = len(ex["input_ids"])
            batch["input_ids"][r, t:t + n] = ex["input_ids"]
            batch["labels"][r, t:t + n] = ex["labels"]
            batch["attention_mask"][r, t:t + n] = 1
            batch["positions"][r, t:t + n] = np.arange(n)
            batch["segment_ids"][r, t:t + n] = s
            batch["content_mask"][r, t:t + n] = ex["content"] if "content" in ex else ex["labels"] != IGNORE_INDEX
            t += n
            k = num_images(ex)
            if k and "pixel_values" in ex:
                pixels[n_img:n_img + k] = ex["pixel_values"]
                n_img += k
    batch["pixel_values"] = pixels
    return batch
