"""Length-grouped order (LLaVA's group_by_modality_length): megabatches of similar length, one modality each."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def record_length(record: dict) -> int:
    """LLaVA's cheap length proxy: words in all turns (text records: words of the text)."""
    if "text" in record:
        return len(record["text"].split())
    return sum(len(v.split()) if isinstance(v, str) else max(len(t.split()) for t in v.values())
               for _, v in record["turns"])


def length_grouped_order(lengths: Sequence[int], is_multimodal: Sequence[bool], batch_size: int,
                         rng: np.random.Generator, megabatch_mult: int = 4) -> np.ndarray:
    """A permutation: each modality shuffled, cut into megabatches of `batch_size*megabatch_mult`, each sorted
    by length (longest first), then the megabatches shuffled together (the last, short ones go last)."""
    lengths, mm = np.asarray(lengths), np.asarray(is_multimodal, bool)
    mega = batch_size * megabatch_mult
    chunks, tails = [], []
    for idx in (np.flatnonzero(mm), np.flatnonzero(~mm)):
        idx = idx[rng.permutation(len(idx))]
        for start in range(0, len(idx), mega):
            c = idx[start:start + mega]
            c = c[np.argsort(-lengths[c], kind="stable")]
            (chunks if len(c) == mega else tails).append(c)
    chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    parts = chunks + tails
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
