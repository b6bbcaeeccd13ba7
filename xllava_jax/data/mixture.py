"""Weighted mixtures of datasets as one random-access source (e.g. LLaVA-Instruct en + ko + mvif)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from xllava_jax.data.report import DataError


def mixture_schedule(sizes: Sequence[int], weights: Sequence[float] | None, length: int | None = None) -> np.ndarray:
    """Dataset index of each mixture position: smooth weighted round-robin (exact proportions, interleaved).

    Without weights it is a concatenation. The default length covers the dataset with the largest size/weight once
    (smaller-weighted ones are subsampled, larger-weighted ones cycled)."""
    sizes = list(sizes)
    if weights is None:
        return np.repeat(np.arange(len(sizes)), sizes)[: length]
    w = np.asarray(weights, np.float64)
    if len(w) != len(sizes) or np.any(w < 0) or w.sum() <= 0:
        raise DataError(f"mixture weights {list(weights)} do not fit {len(sizes)} datasets")
    w = w / w.sum()
    if length is None:
        length = int(max(np.ceil(s / wi) for s, wi in zip(sizes, w) if wi > 0))
    counts = np.floor(w * length).astype(int)
    counts[np.argsort(-(w * length - counts))[: length - counts.sum()]] += 1
    # position of the j-th item of dataset d at (j + 0.5) / counts[d]; merge-sort the positions
    keys = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c])
    ds = np.concatenate([np.full(c, d) for d, c in enumerate(counts) if c])
    return ds[np.argsort(keys, kind="stable")]


class Mixture:
    """Random-access mixture: position i -> item k of dataset d (cycling d when it is upsampled)."""

    def __init__(self, sources: Sequence[Any], weights: Sequence[float] | None = None, length: int | None = None):
        if any(len(s) == 0 for s in sources):
            raise DataError(f"mixture: dataset sizes {[len(s) for s in sources]} include an empty one")
        self.sources = list(sources)
        self.schedule = mixture_schedule([len(s) for s in sources], weights, length)
        self.item = np.zeros(len(self.schedule), np.int64)
        for d in range(len(sources)):
            where = np.flatnonzero(self.schedule == d)
            self.item[where] = np.arange(len(where)) % len(sources[d])

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, i: int) -> Any:
        return self.sources[int(self.schedule[i])][int(self.item[i])]

    def counts(self) -> list[int]:
        """Items drawn from each dataset."""
        return np.bincount(self.schedule, minlength=len(self.sources)).tolist()
