"""Initial model config and parameters of a stage: random, HF directories, or a previous checkpoint.

The tokenizer decides the vocabulary: a decoder smaller than the (possibly expanded) tokenizer
grows new embedding and LM-head rows (models/vocab.py), which is how vocabulary expansion enters
stage 0. The config's execution settings (dtype, attention, scan, remat) always apply.

`model_config` is the one place a training config and tower sizes become a model config; `random_config`
(config.model's sizes) and `resolve_model_config` (the model a stage trains, sized without loading weights:
AOT compiles, memory plans) go through it.
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from xllava_jax.models.clip import CLIPVisionConfig
from xllava_jax.models.llama import LlamaConfig
from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import ModelConfig, init_group, init_params
from xllava_jax.models.presets import text_preset, vision_preset
from xllava_jax.models.vocab import check_tokenizer, grow_vocab, padded_size
from xllava_jax.tokenizer.spm import Tokenizer
from xllava_jax import checkpoint
from xllava_jax.train import trainable

if TYPE_CHECKING:  # type hints only: the GPU image has no ml_collections (bench/gpu_suite.py)
    import ml_collections

EXEC_FIELDS = ("dtype", "param_dtype", "attention", "scan_layers", "remat_policy")


def exec_kwargs(m: ml_collections.ConfigDict) -> dict:
    """The execution settings of config.model."""
    return {k: m[k] for k in EXEC_FIELDS}


def with_exec(cfg: ModelConfig, m: ml_collections.ConfigDict) -> ModelConfig:
    """`cfg` with the execution settings of config.model on every tower."""
    kw = exec_kwargs(m)
    if isinstance(cfg, LlavaConfig):
        return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **kw),
                                   text=dataclasses.replace(cfg.text, **kw))
    return dataclasses.replace(cfg, **kw)


def llava_config(config: ml_collections.ConfigDict, vision: CLIPVisionConfig, text: LlamaConfig, image_token_id: int,
                 pad_token_id: int) -> LlavaConfig:
    """A LLaVA of two towers with the config's projector and feature layer."""
    return LlavaConfig(vision=vision, text=text, projector_type=config.model.projector_type,
                       image_token_id=image_token_id, pad_token_id=pad_token_id,
                       vision_feature_layer=config.model.vision_feature_layer)


def model_config(config: ml_collections.ConfigDict, text: dict, vision: dict, tok: Any) -> ModelConfig:
    """The model of config.model.kind from tower sizes (`text`: LlamaConfig fields, vocab_size -1 = the
    tokenizer's; `vision`: CLIPVisionConfig fields), with the config's execution settings; `tok` gives the
    vocabulary size and the <image>/<pad> ids."""
    text = dict(text)
    if text["vocab_size"] == -1:
        text["vocab_size"] = padded_size(tok.vocab_size, config.init.pad_vocab_to)
    decoder = LlamaConfig(**text, **exec_kwargs(config.model))
    if config.model.kind == "llama":
        return decoder
    return llava_config(config, CLIPVisionConfig(**vision, **exec_kwargs(config.model)), decoder, tok.image_token_id,
                        tok.pad_id)


def random_config(config: ml_collections.ConfigDict, tok: Tokenizer) -> ModelConfig:
    """The model config of config.model (init.source 'random')."""
    return model_config(config, dict(config.model.text), dict(config.model.vision), tok)


class UnknownArchitecture(ValueError):
    """A config whose model cannot be sized without its weights (the message says what to give)."""


ADDED_TOKENS = 2  # <image> and <pad>, appended to an HF tokenizer by tokenizer/spm.py
TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "vocab_size", "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings")


def _hf_json(path: str) -> dict | None:
    """config.json of an HF directory on disk, else None."""
    p = Path(path) / "config.json" if path else None
    return json.loads(p.read_text()) if p is not None and p.is_file() else None


def _text_sizes(config: ml_collections.ConfigDict) -> dict:
    """Decoder sizes: init.llama_dir's config.json, else the preset of its (or the tokenizer's) name."""
    for path in (config.init.llama_dir, config.tokenizer):
        raw = _hf_json(path)
        if raw and "hidden_size" in raw:
            return {k: raw[k] for k in TEXT_FIELDS if k in raw}
        if text_preset(path):
            return text_preset(path)
    raise UnknownArchitecture(
        f"cannot tell the LLM's architecture: init.llama_dir={config.init.llama_dir!r} and tokenizer="
        f"{config.tokenizer!r} are neither HF directories on disk nor known names (models/presets.py); give a "
        "directory with config.json, or init.source=random with model.text sizes")


def _vision_sizes(config: ml_collections.ConfigDict) -> dict:
    """Vision sizes: init.clip_dir's config.json, else its preset, else config.model.vision."""
    vision = dict(config.model.vision)
    clip = _hf_json(config.init.clip_dir)
    clip = clip.get("vision_config", clip) if clip else vision_preset(config.init.clip_dir)
    vision.update({k: clip[k] for k in vision if k in clip} if clip else {})
    return vision


def _tokenizer_stub(config: ml_collections.ConfigDict, base_vocab: int) -> Any:
    """The config's tokenizer when on disk, else what an HF tokenizer of `base_vocab` pieces becomes (<image>
    and <pad> appended)."""
    if config.tokenizer and Path(config.tokenizer).exists():
        from xllava_jax.tokenizer.spm import load_tokenizer
        return load_tokenizer(config.tokenizer)
    base = (text_preset(config.tokenizer) or {"vocab_size": base_vocab})["vocab_size"]
    return types.SimpleNamespace(vocab_size=base + ADDED_TOKENS, image_token_id=base, pad_id=base + 1)


def resolve_model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The model config a stage trains (architecture and the config's execution settings), without loading
    weights: from the checkpoint it starts from, the HF directories' config.json, the presets of the names it
    gives (models/presets.py), or config.model (init.source random). UnknownArchitecture when none says."""
    source = config.init.source
    if source == "checkpoint" and config.init.checkpoint and Path(config.init.checkpoint).exists():
        cfg = checkpoint.load_config(checkpoint.resolve(config.init.checkpoint))
        if isinstance(cfg, LlamaConfig) and config.model.kind == "llava":
            cfg = llava_config(config, CLIPVisionConfig(**_vision_sizes(config)), cfg, cfg.vocab_size - 2,
                               cfg.vocab_size - 1)
        return with_exec(cfg, config.model)
    if source == "random":
        vocab = config.model.text.vocab_size
        if vocab == -1 and not (config.tokenizer and Path(config.tokenizer).exists()):
            raise UnknownArchitecture(f"init.source=random with model.text.vocab_size=-1 needs the tokenizer on "
                                      f"disk (tokenizer={config.tokenizer!r})")
        on_disk = config.tokenizer and Path(config.tokenizer).exists()
        return random_config(config, _tokenizer_stub(config, 0) if on_disk else types.SimpleNamespace(
            vocab_size=vocab, image_token_id=vocab - 2, pad_id=vocab - 1))
    text = _text_sizes(config)
    tok = _tokenizer_stub(config, text["vocab_size"])
    text["vocab_size"] = padded_size(max(tok.vocab_size, text["vocab_size"]), config.init.pad_vocab_to)
    return model_config(config, text, _vision_sizes(config), tok)


def grow_to_tokenizer(cfg: ModelConfig, params: dict, tok: Tokenizer, config: ml_collections.ConfigDict
                      ) -> tuple[ModelConfig, dict]:
    """Grow the decoder's vocabulary to the tokenizer's when the tokenizer is bigger (vocabulary expansion)."""
    text = cfg.text if isinstance(cfg, LlavaConfig) else cfg
    if tok.vocab_size <= text.vocab_size:
        return cfg, params
    lm = params["language_model"] if isinstance(cfg, LlavaConfig) else params
    lm, text = grow_vocab(lm, text, tok.vocab_size, config.init.new_rows_init, config.seed, config.init.pad_vocab_to)
    if isinstance(cfg, LlavaConfig):
        return dataclasses.replace(cfg, text=text), {**params, "language_model": lm}
    return text, lm


def as_llava(text: LlamaConfig, lm: dict, config: ml_collections.ConfigDict, tok: Tokenizer
             ) -> tuple[LlavaConfig, dict]:
    """A stage-0 decoder becoming a LLaVA: CLIP from init.clip_dir (else random config.model.vision), new projector."""
    if config.init.clip_dir:
        from xllava_jax.convert.hf import load_hf_clip
        vision_model, vision_params = load_hf_clip(config.init.clip_dir)
        vision = vision_model.cfg
    else:
        vision, vision_params = CLIPVisionConfig(**dict(config.model.vision)), None
    cfg = llava_config(config, vision, text, tok.image_token_id, tok.pad_id)
    key = jax.random.PRNGKey(config.seed)
    host = lambda group: jax.tree_util.tree_map(np.asarray, init_group(cfg, group, key))  # noqa: E731
    return cfg, {"vision_tower": vision_params or host("vision_tower"), "projector": host("projector"),
                 "language_model": lm}


def loaded_model(config: ml_collections.ConfigDict, tok: Tokenizer, checkpoint_path: str = "") -> tuple[ModelConfig, dict]:
    """(config, host params) from HF directories or a checkpoint (init.source other than 'random')."""
    src, i, kw = config.init.source, config.init, exec_kwargs(config.model)
    kw = {k: v for k, v in kw.items() if k != "param_dtype"}
    if src == "hf":
        from xllava_jax.convert.hf import init_llava_from_hf
        model, params = init_llava_from_hf(i.llama_dir, i.clip_dir, seed=config.seed,
                                           projector_type=config.model.projector_type, new_rows_init=i.new_rows_init,
                                           pad_vocab_to=i.pad_vocab_to,
                                           vision_feature_layer=config.model.vision_feature_layer, **kw)
    elif src == "hf_llava":
        from xllava_jax.convert.hf import load_hf_llava
        model, params = load_hf_llava(i.llava_dir, **kw)
    elif src == "hf_llama":
        from xllava_jax.convert.hf import load_hf_llama
        model, params = load_hf_llama(i.llama_dir, **kw)
    else:
        cfg, params = checkpoint.load_params(checkpoint_path or i.checkpoint, to_host=True)
        if isinstance(cfg, LlamaConfig) and config.model.kind == "llava":
            cfg, params = grow_to_tokenizer(cfg, params, tok, config)
            cfg, params = as_llava(cfg, params, config, tok)
        return cfg, params
    return model.cfg, params


def cast(params: dict, dtype: str) -> dict:
    """Host params stored as `dtype`."""
    return trainable.with_dtype(jax.tree_util.tree_map(np.asarray, params), dtype)


def initial_model(config: ml_collections.ConfigDict, tok: Tokenizer, checkpoint_path: str = ""
                  ) -> tuple[ModelConfig, dict | None]:
    """(model config, host params) a fresh run starts from; params None for random init (made on device)."""
    if config.init.source == "random":
        cfg, params = random_config(config, tok), None
    else:
        cfg, params = loaded_model(config, tok, checkpoint_path)
        cfg, params = grow_to_tokenizer(cfg, params, tok, config)
        cfg = with_exec(cfg, config.model)
        params = cast(params, config.model.param_dtype)
    check_tokenizer(cfg, tok)
    return cfg, params


def place(cfg: ModelConfig, params: dict | None, shardings: Any, seed: int) -> dict:
    """Params on their shardings: host params put there, or random ones initialised there."""
    if params is None:
        return jax.jit(lambda key: init_params(cfg, key), out_shardings=shardings)(jax.random.PRNGKey(seed))
    return jax.device_put(params, shardings)
