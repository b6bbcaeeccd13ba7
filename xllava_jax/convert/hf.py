"""Hugging Face directories <-> our models and plain-dict params (safetensors only, no torch)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import transformers

from xllava_jax.convert import hf_config
from xllava_jax.convert.layout import (CLIP_PREFIXES, LLAMA_PREFIXES, LLAVA_PREFIXES, detect_layout, flatten,
                                       from_hf_layout, hf_key, hf_tensors, is_stacked, unflatten)
from xllava_jax.convert.safetensors_io import StateDict, write_sharded
from xllava_jax.models.clip import CLIPVisionTransformer
from xllava_jax.models.layers import DTYPES
from xllava_jax.models.llama import Llama, LlamaConfig
from xllava_jax.models.llava import Llava, LlavaConfig
from xllava_jax.models.params import abstract_params, build_model, init_params
from xllava_jax.models.vocab import grow_vocab

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")
DEFAULT_MAX_SHARD_BYTES = 4 << 30


def read_hf_config(path: str | os.PathLike) -> Any:
    """The transformers config of a local HF directory (never contacts a hub)."""
    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {path}")
    return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)


def read_params(state: StateDict, abstract: dict, prefixes: list) -> dict:
    """Params shaped like `abstract` (see abstract_params) read from an HF state dict.

    Every key and shape is checked; errors name the HF key and the directory.
    """
    leaves = []
    for path, spec in flatten(abstract):
        stacked = is_stacked(path, prefixes)
        if stacked:
            value = np.stack([from_hf_layout(path, state.get(hf_key(path, prefixes, i))) for i in range(spec.shape[0])])
        else:
            value = from_hf_layout(path, state.get(hf_key(path, prefixes)))
        if value.shape != spec.shape:
            key = hf_key(path, prefixes, 0 if stacked else None)
            have, need = (value.shape[1:], spec.shape[1:]) if stacked else (value.shape, spec.shape)
            raise ValueError(f"weight {key!r} in {state.directory} has shape {have}; the config needs {need}")
        leaves.append((path, value.astype(spec.dtype)))
    return unflatten(iter(leaves))


def write_params(params: dict, path: str | os.PathLike, prefixes: list, hf_cfg: Any,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """config.json plus sharded safetensors of `params` in HF layout (dtype preserved)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    hf_cfg.save_pretrained(str(path))
    write_sharded(path, hf_tensors(params, prefixes), max_shard_bytes)


def read_any_layout(state: StateDict, abstract: dict, layouts: dict) -> dict:
    """read_params with the key layout detected from the checkpoint's keys."""
    return read_params(state, abstract, layouts[detect_layout(set(state.keys()), abstract, layouts)])


def load_hf_llava(path: str | os.PathLike, **exec_kwargs: Any) -> tuple[Llava, dict]:
    """(model, params) from a transformers LlavaForConditionalGeneration directory.

    `exec_kwargs` set how the model runs (dtype, param_dtype, attention, scan_layers,
    remat_policy); param_dtype defaults to the checkpoint's dtype.
    """
    cfg = hf_config.llava_from_hf(read_hf_config(path), **exec_kwargs)
    state = StateDict(path)
    return build_model(cfg), read_any_layout(state, abstract_params(cfg), LLAVA_PREFIXES)


def load_hf_llama(path: str | os.PathLike, **exec_kwargs: Any) -> tuple[Llama, dict]:
    """(model, params) from a transformers LlamaForCausalLM directory (LLaMA-2, Vicuna)."""
    cfg = hf_config.llama_from_hf(read_hf_config(path), **exec_kwargs)
    return build_model(cfg), read_params(StateDict(path), abstract_params(cfg), LLAMA_PREFIXES)


def load_hf_clip(path: str | os.PathLike, **exec_kwargs: Any) -> tuple[CLIPVisionTransformer, dict]:
    """(model, params) of the vision tower of a CLIPVisionModel or full CLIPModel directory."""
    cfg = hf_config.clip_from_hf(read_hf_config(path), **exec_kwargs)
    return build_model(cfg), read_any_layout(StateDict(path), abstract_params(cfg), CLIP_PREFIXES)


def init_llava_from_hf(llama_dir: str | os.PathLike, clip_dir: str | os.PathLike, *, seed: int = 0,
                       projector_type: str = "mlp2x_gelu", image_token_id: int | None = None,
                       pad_token_id: int | None = None, new_rows_init: str = "mean", pad_vocab_to: int | None = 64,
                       vision_feature_layer: int = -2, **exec_kwargs: Any) -> tuple[Llava, dict]:
    """A fresh LLaVA: HF LLaMA/Vicuna + HF CLIP weights and a random projector (how stage 1 starts).

    With image_token_id None, the vocabulary grows by two rows, `<image>` then `<pad>`, as
    llava-hf does (ids V and V+1), and is padded to a multiple of `pad_vocab_to`.
    """
    llama, lm_params = load_hf_llama(llama_dir, **exec_kwargs)
    vision, vision_params = load_hf_clip(clip_dir, **exec_kwargs)
    text_cfg = llama.cfg
    if image_token_id is None:
        image_token_id, pad_token_id = text_cfg.vocab_size, text_cfg.vocab_size + 1
        lm_params, text_cfg = grow_vocab(lm_params, text_cfg, text_cfg.vocab_size + 2, new_rows_init, seed, pad_vocab_to)
    cfg = LlavaConfig(vision=vision.cfg, text=text_cfg, projector_type=projector_type, image_token_id=image_token_id,
                      pad_token_id=pad_token_id, vision_feature_layer=vision_feature_layer)
    model = build_model(cfg)
    fresh = init_params(cfg, jax.random.PRNGKey(seed))
    params = {"vision_tower": vision_params, "language_model": lm_params,
              "projector": jax.tree_util.tree_map(np.asarray, fresh["projector"])}
    return model, params


def save_hf_llava(model: Llava | LlavaConfig, params: dict, path: str | os.PathLike,
                  tokenizer_dir: str | os.PathLike | None = None, layout: str = "llava-hf",
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Write a directory that transformers' LlavaForConditionalGeneration.from_pretrained loads.

    With `tokenizer_dir` (an HF tokenizer directory), its files are copied and a processor
    config is written so AutoProcessor.from_pretrained loads the directory too. `layout`
    names the key layout (see convert.layout.LLAVA_PREFIXES; llava-hf loads everywhere).
    """
    cfg = model.cfg if isinstance(model, Llava) else model
    hf_cfg = hf_config.llava_to_hf(cfg, params_dtype(params["vision_tower"]), params_dtype(params["language_model"]))
    write_params(params, path, LLAVA_PREFIXES[layout], hf_cfg, max_shard_bytes)
    if tokenizer_dir is not None:
        save_processor(cfg, tokenizer_dir, path)


def save_hf_llama(model: Llama | LlamaConfig, params: dict, path: str | os.PathLike,
                  tokenizer_dir: str | os.PathLike | None = None,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Write a transformers LlamaForCausalLM directory (what stage 0 produces)."""
    cfg = model.cfg if isinstance(model, Llama) else model
    write_params(params, path, LLAMA_PREFIXES, hf_config.llama_to_hf(cfg, params_dtype(params)), max_shard_bytes)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, path)


def copy_tokenizer(tokenizer_dir: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """Copy the HF tokenizer files present in `tokenizer_dir`; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        source = Path(tokenizer_dir) / name
        if source.exists():
            shutil.copy2(source, Path(out) / name)
            copied.append(name)
    if not copied:
        raise FileNotFoundError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {tokenizer_dir}")
    return copied


def save_processor(cfg: LlavaConfig, tokenizer_dir: str | os.PathLike, out: str | os.PathLike) -> None:
    """Tokenizer files plus a LlavaProcessor config (CLIP preprocessing at the model's image size)."""
    copy_tokenizer(tokenizer_dir, out)
    size = cfg.vision.image_size
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": size},
                                                      crop_size={"height": size, "width": size})
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.vision.patch_size,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy, num_additional_image_tokens=1,
        image_token=tokenizer.convert_ids_to_tokens(cfg.image_token_id))
    processor.save_pretrained(str(out))


def params_dtype(params: dict) -> str:
    """Name of the dtype most parameter bytes are stored in."""
    sizes: dict[str, int] = {}
    for leaf in jax.tree_util.tree_leaves(params):
        sizes[str(leaf.dtype)] = sizes.get(str(leaf.dtype), 0) + leaf.size
    return max(sizes, key=sizes.get)


def cast_params(params: dict, dtype: str) -> dict:
    """Params cast to a dtype name (e.g. bfloat16 for a smaller export)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(DTYPES[dtype]), params)
