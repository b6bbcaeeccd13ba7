"""Growing a decoder's vocabulary: new rows of the input embedding and the LM head."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from xllava_jax.cli import UserError
from xllava_jax.models.llama import LlamaConfig

INIT_METHODS = ("mean", "mean_cov", "normal")
COV_SCALE = 1e-5  # llava-hf: N(mean, 1e-5 * covariance) of the old rows
NORMAL_STD = 0.02  # LLaMA's initializer_range


def padded_size(size: int, multiple: int | None) -> int:
    """`size` rounded up to a multiple (unchanged for None or 1)."""
    return size if not multiple or multiple <= 1 else -(-size // multiple) * multiple


def new_rows(old: np.ndarray, count: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """`count` rows [count, H] initialised from the old rows [V, H].

    mean: the mean of the old rows (LLaVA); mean_cov: samples of N(mean, 1e-5 * covariance)
    of the old rows (llava-hf); normal: N(0, 0.02^2) (the paper's random init).
    """
    if method not in INIT_METHODS:
        raise ValueError(f"vocabulary init method {method!r}; expected one of {INIT_METHODS}")
    if count == 0:
        return np.zeros((0, old.shape[1]), old.dtype)
    if method == "normal":
        return rng.normal(0.0, NORMAL_STD, size=(count, old.shape[1])).astype(old.dtype)
    old32 = np.asarray(old, np.float32)
    mean = old32.mean(axis=0)
    if method == "mean":
        return np.broadcast_to(mean, (count, old.shape[1])).astype(old.dtype)
    centred = old32 - mean
    cov = COV_SCALE * (centred.T @ centred / old.shape[0]).astype(np.float64)
    try:
        rows = rng.multivariate_normal(mean, cov, size=count, method="cholesky")
    except np.linalg.LinAlgError:  # singular covariance (fewer old rows than hidden units)
        rows = rng.multivariate_normal(mean, cov, size=count, method="eigh")
    return rows.astype(old.dtype)


def grow_rows(old: np.ndarray, target: int, method: str, rng: np.random.Generator,
              moved: Mapping[int, int] | None = None) -> np.ndarray:
    """Rows [target, H]: the old rows [V, H] bit-identical at their ids, then new rows.

    `moved` maps old ids to new ids whose rows move with their token (LLaVA's `<image>`
    and `<pad>` when pieces are appended before them); the rows they vacate are new
    tokens and are initialised like the appended rows.
    """
    moved = {int(a): int(b) for a, b in (moved or {}).items() if a != b}
    vacated = sorted(set(moved) - set(moved.values()))
    for old_id, new_id in moved.items():
        if not (0 <= old_id < old.shape[0] and 0 <= new_id < target):
            raise ValueError(f"cannot move row {old_id} to {new_id}: vocabulary {old.shape[0]} -> {target}")
    fresh = new_rows(old, target - old.shape[0] + len(vacated), method, rng)
    grown = np.concatenate([np.asarray(old), fresh[: target - old.shape[0]]], axis=0)
    for old_id, new_id in moved.items():
        grown[new_id] = old[old_id]
    for i, old_id in enumerate(vacated):
        grown[old_id] = fresh[target - old.shape[0] + i]
    return grown


def grow_tables(embedding: np.ndarray, head_rows: np.ndarray | None, target: int, method: str = "mean",
                seed: int = 0, moved: Mapping[int, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The input embedding [V, H] and the LM head as rows [V, H] (None when tied) grown to `target` rows."""
    if target < embedding.shape[0]:
        raise ValueError(f"cannot shrink the vocabulary from {embedding.shape[0]} to {target}")
    rng = np.random.default_rng(seed)
    grown = grow_rows(embedding, target, method, rng, moved)
    return grown, None if head_rows is None else grow_rows(head_rows, target, method, rng, moved)


def grow_vocab(lm_params: dict, cfg: LlamaConfig, new_size: int, method: str = "mean",
               seed: int = 0, pad_to_multiple: int | None = None,
               moved: Mapping[int, int] | None = None) -> tuple[dict, LlamaConfig]:
    """Decoder params and config with the vocabulary grown to `new_size` (then padded).

    Old rows are kept bit-identical (see grow_rows for `moved`); only embed_tokens and lm_head change.
    """
    target = padded_size(new_size, pad_to_multiple)
    if target < cfg.vocab_size:
        raise ValueError(f"cannot shrink the vocabulary from {cfg.vocab_size} to {target}")
    head = np.asarray(lm_params["lm_head"]["kernel"]).T if "lm_head" in lm_params else None
    embedding, head = grow_tables(np.asarray(lm_params["embed_tokens"]["embedding"]), head, target, method, seed,
                                  moved)
    grown = dict(lm_params, embed_tokens={"embedding": embedding})
    if head is not None:
        grown["lm_head"] = {"kernel": head.T}
    return grown, dataclasses.replace(cfg, vocab_size=target)


class TokenizerMismatch(UserError, ValueError):
    """A tokenizer whose ids do not fit the model."""


def check_tokenizer(cfg, tok) -> None:
    """Raise TokenizerMismatch (a ValueError) if a tokenizer's ids do not fit a LLaMA/LLaVA config (vocabulary
    size, image token)."""
    text = getattr(cfg, "text", cfg)
    if tok.vocab_size > text.vocab_size:
        raise TokenizerMismatch(f"tokenizer has {tok.vocab_size} ids but the model's vocabulary is {text.vocab_size}")
    image_token_id = getattr(cfg, "image_token_id", None)
    if image_token_id is not None and tok.image_token_id != image_token_id:
        raise TokenizerMismatch(f"tokenizer's <image> id is {tok.image_token_id} but the model's image_token_id is "
                         f"{image_token_id}; use the tokenizer the model was trained with")
