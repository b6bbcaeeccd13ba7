"""Growing a checkpoint's vocabulary (embedding and LM-head rows) to an expanded tokenizer's size.

- Orbax checkpoint (LLaVA or LLaMA kind): Orbax cannot copy arrays from one checkpoint to
  another without reading them, and the `params` item is written as one pytree, so the
  params are restored once onto the host CPU device (never an accelerator; one copy), the
  embedding and LM-head leaves are replaced, and the result is saved with the updated model
  config. Peak host memory is one copy of the params plus the two vocabulary matrices
  twice. Optimizer and data-iterator state are not carried over (their shapes follow the
  vocabulary): the result is a starting point, like `convert hf-to-orbax` output.
- HF LLaMA directory: tensors are streamed, one at a time, into new shards (at most one
  output shard in memory); only the embedding and the LM head are read whole and grown.
  config.json is copied with the new vocab_size; the other files (generation config, and
  the tokenizer unless a new one is given) are copied.

With a tokenizer, the target size is the tokenizer's (pieces plus its added tokens such as
`<image>` and `<pad>`); a LLaVA's image and pad ids follow the tokenizer, and their rows move
with them (the ids they leave are new pieces, initialised like the other new rows).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import jax
import numpy as np

from xllava_jax.cli import atomic_output
from xllava_jax.convert.hf import TOKENIZER_FILES, copy_tokenizer
from xllava_jax.convert.layout import LLAMA_PREFIXES, hf_key
from xllava_jax.convert.safetensors_io import INDEX_FILE, StateDict, write_sharded
from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import ModelConfig, abstract_params
from xllava_jax.models.vocab import grow_tables, grow_vocab, padded_size
from xllava_jax.tokenizer.spm import load_tokenizer
from xllava_jax import checkpoint

EMBED_KEY = hf_key(("embed_tokens", "embedding"), LLAMA_PREFIXES)
HEAD_KEY = hf_key(("lm_head", "kernel"), LLAMA_PREFIXES)
TOKENIZER_SIDE_FILES = ("processor_config.json", "preprocessor_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


@dataclasses.dataclass(frozen=True)
class Target:
    """The vocabulary to grow to: size (before padding), and for LLaVA the image and pad ids."""

    size: int
    image_token_id: int | None = None
    pad_token_id: int | None = None


def target_of(vocab_size: int | None, tokenizer: str | os.PathLike | None) -> Target:
    """The target of `--vocab_size N` or `--tokenizer DIR` (exactly one)."""
    if (vocab_size is None) == (tokenizer is None):
        raise ValueError("give exactly one of vocab_size and tokenizer")
    if tokenizer is None:
        return Target(int(vocab_size))
    tok = load_tokenizer(tokenizer)
    return Target(tok.vocab_size, tok.image_token_id, tok.pad_id)


def grow_model(cfg: ModelConfig, params: dict, target: Target, method: str = "mean", seed: int = 0,
               pad_to_multiple: int | None = None) -> tuple[ModelConfig, dict]:
    """(config, params) of a LLaVA or LLaMA with the vocabulary grown; old rows bit-identical."""
    if not isinstance(cfg, LlavaConfig):
        params, cfg = grow_vocab(params, cfg, target.size, method, seed, pad_to_multiple)
        return cfg, params
    ids = {"image_token_id": target.image_token_id, "pad_token_id": target.pad_token_id}
    ids = {k: v for k, v in ids.items() if v is not None and getattr(cfg, k) is not None}
    moved = {getattr(cfg, k): v for k, v in ids.items()}
    lm, text = grow_vocab(params["language_model"], cfg.text, target.size, method, seed, pad_to_multiple, moved)
    return dataclasses.replace(cfg, text=text, **ids), {**params, "language_model": lm}


def grow_checkpoint(path: str | os.PathLike, out: str | os.PathLike, target: Target, method: str = "mean",
                    seed: int = 0, pad_to_multiple: int | None = None) -> ModelConfig:
    """Grow an Orbax checkpoint (a step or a workdir: its latest step) into a new checkpoint `out` (Orbax writes it
    into a temporary directory and renames it when complete)."""
    cfg = checkpoint.load_config(path)
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    cfg, params = checkpoint.load_params(path, shardings=jax.tree_util.tree_map(lambda _: host, abstract_params(cfg)))
    cfg, params = grow_model(cfg, params, target, method, seed, pad_to_multiple)
    cfg.validate()
    checkpoint.save_params(out, params, cfg)
    return cfg


def grow_hf_llama(hf_dir: str | os.PathLike, out: str | os.PathLike, target: Target, method: str = "mean",
                  seed: int = 0, pad_to_multiple: int | None = None, tokenizer: str | os.PathLike | None = None,
                  max_shard_bytes: int = 4 << 30) -> dict:
    """Grow a transformers LlamaForCausalLM directory into `out`, streaming the tensors; returns the new config."""
    hf_dir, out = Path(hf_dir), Path(out)
    config = _read_config(hf_dir)
    if config.get("model_type") != "llama":
        raise ValueError(f"{hf_dir / 'config.json'}: model_type {config.get('model_type')!r}; growing an HF "
                         "directory supports LLaMA (convert a LLaVA to Orbax first: python -m xllava_jax.convert "
                         "hf-to-orbax)")
    state = StateDict(hf_dir)
    embedding = state.get(EMBED_KEY)
    head = state.get(HEAD_KEY) if HEAD_KEY in state else None  # absent when tied
    size = padded_size(target.size, pad_to_multiple)
    embedding, head = grow_tables(embedding, head, size, method, seed)
    grown = {EMBED_KEY: embedding, **({HEAD_KEY: head} if head is not None else {})}
    config["vocab_size"] = size
    with atomic_output(out) as tmp:  # `out` appears whole or not at all
        write_sharded(tmp, _streamed(state, grown), max_shard_bytes)
        _copy_side_files(hf_dir, tmp, keep_tokenizer=tokenizer is None)
        if tokenizer is not None:
            copy_tokenizer(tokenizer, tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def _read_config(hf_dir: Path) -> dict:
    """config.json of an HF directory."""
    file = hf_dir / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"no config.json in {hf_dir}")
    return json.loads(file.read_text())


def _streamed(state: StateDict, replaced: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """(key, tensor) pairs of a state dict read one at a time, with some tensors replaced."""
    for key in state.keys():
        yield key, replaced[key] if key in replaced else state.get(key)


def _copy_side_files(hf_dir: Path, out: Path, keep_tokenizer: bool) -> None:
    """Copy the files that are neither weights nor config.json (tokenizer files only if `keep_tokenizer`)."""
    skip = {"config.json", INDEX_FILE, *(() if keep_tokenizer else (*TOKENIZER_FILES, *TOKENIZER_SIDE_FILES))}
    for file in hf_dir.iterdir():
        if file.is_file() and file.name not in skip and file.suffix not in WEIGHT_SUFFIXES:
            shutil.copy2(file, out / file.name)
