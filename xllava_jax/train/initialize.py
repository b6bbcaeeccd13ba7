"""Initial model config and parameters of a stage: random, HF directories, or a previous checkpoint.

The tokenizer decides the vocabulary: a decoder smaller than the (possibly expanded) tokenizer
grows new embedding and LM-head rows (models/vocab.py), which is how vocabulary expansion enters
stage 0. The config's execution settings (dtype, attention, scan, remat) always apply.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from xllava_jax.models.clip import CLIPVisionConfig
from xllava_jax.models.llama import LlamaConfig
from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import ModelConfig, init_group, init_params
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


def random_text_config(m: ml_collections.ConfigDict, tok: Tokenizer, pad_to: int) -> LlamaConfig:
    """The decoder of config.model.text; vocab_size -1 = the tokenizer's vocabulary, padded."""
    text = dict(m.text)
    if text["vocab_size"] == -1:
        text["vocab_size"] = padded_size(tok.vocab_size, pad_to)
    return LlamaConfig(**text, **exec_kwargs(m))


def random_config(config: ml_collections.ConfigDict, tok: Tokenizer) -> ModelConfig:
    """The model config of config.model (init.source 'random')."""
    text = random_text_config(config.model, tok, config.init.pad_vocab_to)
    if config.model.kind == "llama":
        return text
    return LlavaConfig(vision=CLIPVisionConfig(**dict(config.model.vision), **exec_kwargs(config.model)), text=text,
                       projector_type=config.model.projector_type, image_token_id=tok.image_token_id,
                       pad_token_id=tok.pad_id, vision_feature_layer=config.model.vision_feature_layer)


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
    cfg = LlavaConfig(vision=vision, text=text, projector_type=config.model.projector_type,
                      image_token_id=tok.image_token_id, pad_token_id=tok.pad_id,
                      vision_feature_layer=config.model.vision_feature_layer)
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
