"""Hugging Face directories <-> our models and plain-dict params (safetensors only, no torch)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from xllava_jax.checkpoint import LazyParam, PendingArray
from xllava_jax.cli import UserError, atomic_output, available_memory
from xllava_jax.convert import hf_config
from xllava_jax.data.chat_template import chat_template
from xllava_jax.convert.layout import (CLIP_PREFIXES, LLAMA_PREFIXES, LLAVA_PREFIXES, detect_layout, flatten,
                                       from_hf_layout, hf_key, hf_tensors, is_stacked, transposes_matrices,
                                       unflatten)
from xllava_jax.convert.safetensors_io import StateDict, write_sharded
from xllava_jax.models.clip import CLIPVisionTransformer
from xllava_jax.models.layers import DTYPES
from xllava_jax.models.llama import Llama, LlamaConfig
from xllava_jax.models.llava import Llava, LlavaConfig
from xllava_jax.models import cpu_kernels
from xllava_jax.models.params import abstract_params, build_model, init_group, param_logical_axes
from xllava_jax.sharding import tree_shardings
from xllava_jax.models.vocab import check_tokenizer, grow_vocab
from xllava_jax.tokenizer.hf_export import export_hf_tokenizer, update_tokenizer_config
from xllava_jax.tokenizer.spm import load_tokenizer

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")
DEFAULT_MAX_SHARD_BYTES = 4 << 30


def read_hf_config(path: str | os.PathLike) -> Any:
    """The transformers config of a local HF directory (never contacts a hub)."""
    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {path}")
    return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)


def read_config_json(path: str | os.PathLike) -> dict:
    """The values of a local HF directory's config.json; errors name the file."""
    file = Path(path) / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"no config.json in {path}")
    try:
        values = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(values, dict) or "model_type" not in values:
        raise ValueError(f"{file} has no model_type")
    return values


def model_config(path: str | os.PathLike, convert: Callable[..., Any], **exec_kwargs: Any) -> Any:
    """convert(config, **exec_kwargs) (an hf_config *_from_hf) of a local HF directory: from config.json's own
    values when they hold every setting it reads (transformers' config classes import torch.distributed, 0.7 s
    of a load), else from transformers' config, which fills in its defaults."""
    try:
        return convert(hf_config.ConfigJson(read_config_json(path)), **exec_kwargs)
    except AttributeError:
        return convert(read_hf_config(path), **exec_kwargs)


def read_params(state: StateDict, abstract: dict, prefixes: list, shardings: Any = None, pending: bool = False,
                mapped: bool = False) -> dict:
    """Params shaped like `abstract` (see abstract_params) read from an HF state dict.

    Every key and shape is checked first; errors name the HF key and the directory. Without `shardings`, NumPy
    arrays; with `shardings` (a pytree like `abstract`), device arrays streamed to them (stream_leaf), so the
    host holds at most one layer's tensor or one unstacked leaf beside what the devices hold; with `pending` too,
    checkpoint.PendingArray leaves that stream when made (a conversion's save makes one at a time); with `mapped`,
    Dense kernels for one CPU device stay in the mapped files where they can (mapped_leaf).
    """
    placements = dict(flatten(shardings)) if shardings is not None else None
    leaves, copied = [], []
    for path, spec in small_first(flatten(abstract)):
        stacked = is_stacked(path, prefixes)
        keys = [hf_key(path, prefixes, i) for i in range(spec.shape[0])] if stacked else [hf_key(path, prefixes)]
        need = spec.shape[1:] if stacked else spec.shape
        for key in keys:
            have = from_hf_layout(path, state.get(key)).shape
            if have != need:
                raise ValueError(f"weight {key!r} in {state.directory} has shape {have}; the config needs {need}")
        kernel = mapped_leaf(state, keys, path, spec.dtype, need, placements[path]) if mapped and placements else None
        if kernel is not None:
            leaves.append((path, kernel))
        else:
            copied.append((path, spec, keys, stacked))
    if placements is not None:
        state.drop_cache = not fits_beside_cache(state, [spec for _, spec, _, _ in copied])
    for path, spec, keys, stacked in copied:
        if placements is None:
            leaves.append((path, host_leaf(state, keys, path, spec, stacked)))
            continue
        make = functools.partial(stream_leaf, state, keys, path, spec, stacked, placements[path])
        leaves.append((path, PendingArray(spec.shape, spec.dtype, make) if pending else make()))
    return unflatten(iter(leaves))


def mapped_leaf(state: StateDict, keys: list[str], path: tuple, dtype: Any, slot: tuple, sharding: Any
                ) -> cpu_kernels.MappedKernel | None:
    """A Dense kernel left in place in the mapped files (cpu_kernels.MappedKernel; `state` keeps them mapped), where
    its HF tensors are bf16 Linear weights, the leaf bf16 on one CPU device and the CPU runs the mapped products;
    else None (copied)."""
    if not transposes_matrices(path) or not cpu_kernels.on_one_cpu(sharding):
        return None
    hosts = [state.get(key) for key in keys]
    if not all(cpu_kernels.maps(host, dtype, slot) for host in hosts):
        return None
    return cpu_kernels.mapped_kernel(hosts, slot, state)


def small_first(items: list[tuple[tuple, Any]]) -> list[tuple[tuple, Any]]:
    """(path, spec) pairs with leaves under STREAM_MIN_BYTES first (else in order): the small tensors lie between
    the big ones in the files, and are read while still in the page cache, before copying the big ones makes room
    by evicting pages (a 7B load read its 300 biases and norms back from disk: 0.5 s)."""
    return sorted(items, key=lambda item: tree_bytes(item[1]) >= STREAM_MIN_BYTES)


def fits_beside_cache(state: StateDict, abstract: Any) -> bool:
    """Whether host memory can hold the params of `abstract` (a pytree of shapes) and all of `state`'s files in the
    page cache at once (cached pages count as available, so both must fit in what is available now)."""
    available = available_memory()
    return available is None or available >= tree_bytes(abstract) + state.nbytes()


def host_leaf(state: StateDict, keys: list[str], path: tuple, spec: Any, stacked: bool) -> np.ndarray:
    """One param as a NumPy array in our layout and dtype from its HF tensors (one per layer when stacked); each
    tensor's mapped pages are dropped once copied."""
    value = np.empty(spec.shape, spec.dtype)
    for i, key in enumerate(keys):
        value[i if stacked else ...] = from_hf_layout(path, state.get(key))
        state.release(key)
    return value


STREAM_MIN_BYTES = 64 << 20  # stacked leaves at least this big go to the device layer by layer


@functools.lru_cache(maxsize=None)
def _device_ops(kind: str, dtype: Any, shape: tuple, sharding: Any) -> tuple[Callable, Callable]:
    """(zeros, write layer i in place) for stacked leaves of one kind, dtype, shape and sharding; an HF tensor is
    moved to our layout (from_hf_layout) and cast on the device."""
    zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
    write = jax.jit(lambda stack, raw, i: jax.lax.dynamic_update_index_in_dim(
        stack, from_hf_layout((kind,), raw).astype(dtype), i, 0), out_shardings=sharding, donate_argnums=0)
    return zeros, write


def stream_leaf(state: StateDict, keys: list[str], path: tuple, spec: Any, stacked: bool, sharding: Any) -> jax.Array:
    """One param on its devices, each layer's mapped pages dropped once it is there: matrices for one CPU device are
    copied or transposed straight from the mapped file (cpu_kernels.load_stack); a big stacked leaf is written layer
    by layer in place; any other leaf is put whole from host_leaf."""
    slot = tuple(spec.shape[1:] if stacked else spec.shape)
    if cpu_kernels.loads(state.get(keys[0]).dtype, spec.dtype, slot, sharding):
        # the kernel releases each layer's pages itself (and with drop_cache evicts them), as state.release would
        return cpu_kernels.load_stack([state.get(key) for key in keys], tuple(spec.shape),
                                      transpose=transposes_matrices(path),
                                      release="evict" if state.drop_cache else "unmap")
    if not stacked or tree_bytes(spec) < STREAM_MIN_BYTES:
        return jax.device_put(host_leaf(state, keys, path, spec, stacked), sharding).block_until_ready()
    zeros, write = _device_ops(path[-1], jnp.dtype(spec.dtype), tuple(spec.shape), sharding)
    value = zeros()
    for i, key in enumerate(keys):
        value = write(value, state.get(key), i)
        value.block_until_ready()
        state.release(key)
    return value


def write_params(params: dict, path: str | os.PathLike, prefixes: list, hf_cfg: Any,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """config.json plus sharded safetensors of `params` in HF layout (dtype preserved)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    hf_cfg.save_pretrained(str(path))
    write_sharded(path, hf_tensors(params, prefixes), max_shard_bytes)


def read_any_layout(state: StateDict, abstract: dict, layouts: dict, shardings: Any = None,
                    pending: bool = False, mapped: bool = False) -> dict:
    """read_params with the key layout detected from the checkpoint's keys."""
    prefixes = layouts[detect_layout(set(state.keys()), abstract, layouts)]
    return read_params(state, abstract, prefixes, shardings, pending, mapped)


Placement = Callable[[Any], Any] | None  # model config -> shardings pytree like its params (None: NumPy arrays)


def placement(mesh: Any = None) -> Callable[[Any], Any]:
    """Model config -> where each param goes: its training sharding on `mesh`, else the first local device."""
    def shardings(cfg: Any) -> Any:
        abstract = abstract_params(cfg)
        if mesh is not None:
            return tree_shardings(param_logical_axes(cfg), abstract, mesh)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree_util.tree_map(lambda _: device, abstract)
    return shardings


def load_hf_llava(path: str | os.PathLike, placement: Placement = None, pending: bool = False, mapped: bool = False,
                  **exec_kwargs: Any) -> tuple[Llava, dict]:
    """(model, params) from a transformers LlavaForConditionalGeneration directory.

    `exec_kwargs` set how the model runs (dtype, param_dtype, attention, scan_layers,
    remat_policy); param_dtype defaults to the checkpoint's dtype. With `placement`, params are device
    arrays streamed to placement(cfg) (see read_params), or with `pending` PendingArrays that stream when made;
    else NumPy arrays. With `mapped`, Dense kernels for one CPU device stay in the mapped files (mapped_leaf).
    """
    cfg = model_config(path, hf_config.llava_from_hf, **exec_kwargs)
    state = StateDict(path)
    shardings = placement(cfg) if placement is not None else None
    return build_model(cfg), read_any_layout(state, abstract_params(cfg), LLAVA_PREFIXES, shardings, pending, mapped)


def load_hf_llama(path: str | os.PathLike, placement: Placement = None, pending: bool = False, mapped: bool = False,
                  **exec_kwargs: Any) -> tuple[Llama, dict]:
    """(model, params) from a transformers LlamaForCausalLM directory (LLaMA-2, Vicuna); `placement`, `pending`
    and `mapped` as in load_hf_llava."""
    cfg = model_config(path, hf_config.llama_from_hf, **exec_kwargs)
    shardings = placement(cfg) if placement is not None else None
    return build_model(cfg), read_params(StateDict(path), abstract_params(cfg), LLAMA_PREFIXES, shardings, pending,
                                         mapped)


def load_hf_clip(path: str | os.PathLike, **exec_kwargs: Any) -> tuple[CLIPVisionTransformer, dict]:
    """(model, params) of the vision tower of a CLIPVisionModel or full CLIPModel directory."""
    cfg = model_config(path, hf_config.clip_from_hf, **exec_kwargs)
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
    projector = init_group(cfg, "projector", jax.random.PRNGKey(seed))  # not a whole LLaVA on one device
    params = {"vision_tower": vision_params, "language_model": lm_params,
              "projector": jax.tree_util.tree_map(np.asarray, projector)}
    return model, params


def save_hf_llava(model: Llava | LlavaConfig, params: dict, path: str | os.PathLike,
                  tokenizer_dir: str | os.PathLike | None = None, layout: str = "llava-hf",
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, template: str | None = "vicuna_v1") -> None:
    """Write a directory that transformers' LlavaForConditionalGeneration.from_pretrained loads.

    With `tokenizer_dir` (an HF tokenizer directory), the tokenizer is exported to tokenize prompts as
    training did (see export_hf_tokenizer) with the chat template of `template` (the training
    conversation template; None: none), and a processor config is written so AutoProcessor loads the
    directory too. `layout` names the key layout (convert.layout.LLAVA_PREFIXES; llava-hf loads
    everywhere). Every input is checked first, and `path` appears whole or not at all.
    """
    cfg = model.cfg if isinstance(model, Llava) else model
    check_param_shapes(params, cfg)
    hf_cfg = hf_config.llava_to_hf(cfg, params_dtype(params["vision_tower"]), params_dtype(params["language_model"]))
    if tokenizer_dir is not None:
        check_tokenizer_dir(cfg, tokenizer_dir)
        jinja = chat_template(template) if template else None
    with atomic_output(path) as tmp:
        write_params(params, tmp, LLAVA_PREFIXES[layout], hf_cfg, max_shard_bytes)
        if tokenizer_dir is not None:
            save_processor(cfg, tokenizer_dir, tmp, jinja)


def save_hf_llama(model: Llama | LlamaConfig, params: dict, path: str | os.PathLike,
                  tokenizer_dir: str | os.PathLike | None = None,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Write a transformers LlamaForCausalLM directory (what stage 0 produces); checked first, written whole."""
    cfg = model.cfg if isinstance(model, Llama) else model
    check_param_shapes(params, cfg)
    hf_cfg = hf_config.llama_to_hf(cfg, params_dtype(params))
    if tokenizer_dir is not None:
        check_tokenizer_dir(cfg, tokenizer_dir)
    with atomic_output(path) as tmp:
        write_params(params, tmp, LLAMA_PREFIXES, hf_cfg, max_shard_bytes)
        if tokenizer_dir is not None:
            export_hf_tokenizer(tokenizer_dir, tmp)


class ExportError(UserError, ValueError):
    """Inputs of an export that do not fit together (tokenizer vs model, params vs config)."""


def check_param_shapes(params: dict, cfg: LlavaConfig | LlamaConfig) -> None:
    """Raise ExportError naming the first parameter whose shape (or presence) differs from what `cfg` needs (and
    ValueError for mapped params)."""
    cpu_kernels.require_copied(params, "export them")
    have = dict(flatten(params))
    for path, spec in flatten(abstract_params(cfg)):
        name = "/".join(map(str, path))
        if path not in have:
            raise ExportError(f"parameter {name} is missing; the config needs shape {spec.shape}")
        if tuple(have[path].shape) != tuple(spec.shape):
            raise ExportError(f"parameter {name} has shape {tuple(have[path].shape)}; the config needs {spec.shape}")


def check_tokenizer_dir(cfg: LlavaConfig | LlamaConfig, tokenizer_dir: str | os.PathLike) -> None:
    """Raise ExportError unless `tokenizer_dir` is a tokenizer directory whose ids fit the model (check_tokenizer)."""
    if not (Path(tokenizer_dir) / "tokenizer.model").is_file():
        raise ExportError(f"--tokenizer_dir {tokenizer_dir}: no tokenizer.model there (an HF tokenizer directory "
                          "of the checkpoint's SentencePiece model is expected)")
    try:
        check_tokenizer(cfg, load_tokenizer(tokenizer_dir))
    except ValueError as e:
        raise ExportError(f"tokenizer {tokenizer_dir} does not match the checkpoint: {e}") from e


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


def save_processor(cfg: LlavaConfig, tokenizer_dir: str | os.PathLike, out: str | os.PathLike,
                   chat_template: str | None = None) -> None:
    """The exported tokenizer (export_hf_tokenizer) plus a LlavaProcessor config (CLIP preprocessing at the
    model's image size) carrying `chat_template` too."""
    tokenizer = export_hf_tokenizer(tokenizer_dir, out, chat_template)
    size = cfg.vision.image_size
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": size},
                                                      crop_size={"height": size, "width": size})
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.vision.patch_size,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy, num_additional_image_tokens=1,
        image_token=tokenizer.convert_ids_to_tokens(cfg.image_token_id), chat_template=chat_template)
    processor.save_pretrained(str(out))  # saves the tokenizer again
    update_tokenizer_config(out, legacy=True)


def params_dtype(params: dict) -> str:
    """Name of the dtype most parameter bytes are stored in."""
    sizes: dict[str, int] = {}
    for leaf in jax.tree_util.tree_leaves(params):
        sizes[str(leaf.dtype)] = sizes.get(str(leaf.dtype), 0) + leaf.size
    return max(sizes, key=sizes.get)


def cast_params(params: dict, dtype: str) -> dict:
    """Params cast to a dtype name (e.g. bfloat16 for a smaller export), leaf by leaf in place: each source leaf
    is dropped from `params` (and so freed) as its cast replaces it; a LazyParam stays lazy (cast when read).
    Returns `params`."""
    for node, key in [(node, key) for node in _dict_nodes(params) for key in node if not isinstance(node[key], dict)]:
        value = node[key]
        node[key] = value.astype(DTYPES[dtype]) if isinstance(value, LazyParam) else np.asarray(value).astype(DTYPES[dtype])
    return params


def _dict_nodes(tree: dict) -> Iterator[dict]:
    yield tree
    for value in tree.values():
        if isinstance(value, dict):
            yield from _dict_nodes(value)


def host_bytes(cfg: LlavaConfig | LlamaConfig, dtype: str | None = None) -> int:
    """Bytes of `cfg`'s params in their dtype (or `dtype`)."""
    return tree_bytes(abstract_params(cfg), DTYPES[dtype] if dtype else None)


def tree_bytes(tree: Any, dtype: Any = None) -> int:
    """Bytes of a pytree of arrays or shape-dtype structs in their dtypes (or all in `dtype`)."""
    return sum(math.prod(x.shape) * jnp.dtype(dtype or x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))
