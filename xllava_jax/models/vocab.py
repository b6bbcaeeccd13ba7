"""Growing a decoder's vocabulary: new rows of the input embedding and the LM head."""

from __future__ import annotations

import dataclasses

import numpy as np

from xllava_jax.models.llama import LlamaConfig

INIT_METHODS = ("mean", "mean_cov", "normal")


def padded_size(size: int, multiple: int | None) -> int:
    """`size` rounded up to a multiple (unchanged for None or 1)."""
    return size if not multiple or multiple <= 1 else -(-size // multiple) * multiple


def new_rows(old: np.ndarray, count: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """`count` rows [count, H] initialised from the old rows [V, H].

    mean: the mean of the old rows (LLaVA); mean_cov: samples of N(mean, 1e-5 * covariance)
    of the old rows (llava-hf); normal: N(0, 0.02^2).
    """
    old32 = old.astype(np.float32)
    if method == "mean":
        rows = np.broadcast_to(old32.mean(axis=0), (count, old.shape[1]))
    elif method == "mean_cov":
        mean = old32.mean(axis=0)
        centred = old32 - mean
        cov = centred.T @ centred / old.shape[0]
        rows = rng.multivariate_normal(mean, 1e-5 * cov, size=count, method="cholesky" if count else "svd")
    elif method == "normal":
        rows = rng.normal(0.0, 0.02, size=(count, old.shape[1]))
    else:
        raise ValueError(f"vocabulary init method {method!r}; expected one of {INIT_METHODS}")
    return np.asarray(rows, dtype=old.dtype)


def grow_vocab(lm_params: dict, cfg: LlamaConfig, new_size: int, method: str = "mean",
               seed: int = 0, pad_to_multiple: int | None = None) -> tuple[dict, LlamaConfig]:
    """Decoder params and config with the vocabulary grown to `new_size` (then padded).

    Old rows are kept bit-identical; only embed_tokens and lm_head change.
    """
    target = padded_size(new_size, pad_to_multiple)
    if target < cfg.vocab_size:
        raise ValueError(f"cannot shrink the vocabulary from {cfg.vocab_size} to {target}")
    count = target - cfg.vocab_size
    rng = np.random.default_rng(seed)
    embedding = np.asarray(lm_params["embed_tokens"]["embedding"])
    grown = dict(lm_params, embed_tokens={"embedding": np.concatenate(
        [embedding, new_rows(embedding, count, method, rng)], axis=0)})
    if "lm_head" in lm_params:
        head = np.asarray(lm_params["lm_head"]["kernel"]).T
        grown["lm_head"] = {"kernel": np.concatenate([head, new_rows(head, count, method, rng)], axis=0).T}
    return grown, dataclasses.replace(cfg, vocab_size=target)
