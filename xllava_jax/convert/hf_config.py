"""Our model configs <-> transformers config objects (config.json)."""

from __future__ import annotations

from typing import Any

import transformers

from xllava_jax.models.clip import ACTIVATIONS, CLIPVisionConfig
from xllava_jax.models.llama import LlamaConfig
from xllava_jax.models.llava import LlavaConfig

DTYPE_NAMES = ("float32", "bfloat16", "float16")


class ConfigJson:
    """A config.json's values as attributes, as the *_from_hf readers take them, nested configs too. A key the file
    lacks raises AttributeError: its value is transformers' default, which only transformers' config knows."""

    def __init__(self, values: dict):
        self._values = values

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__["_values"]
        if name == "dtype" and name not in values:
            name = "torch_dtype"  # what transformers 4 wrote
        if name not in values:
            raise AttributeError(name)
        value = values[name]
        return ConfigJson(value) if name.endswith("_config") and isinstance(value, dict) else value


def _dtype_name(hf: Any, default: str = "float32") -> str:
    dtype = getattr(hf, "dtype", None)  # transformers 5 reads a config.json "torch_dtype" into dtype
    name = str(dtype).replace("torch.", "") if dtype is not None else default
    return name if name in DTYPE_NAMES else default


def _require(condition: bool, setting: str, value: Any, supported: str) -> None:
    if not condition:
        raise ValueError(f"unsupported config setting {setting}={value!r}: {supported}")


def llama_from_hf(hf: Any, **exec_kwargs: Any) -> LlamaConfig:
    """LlamaConfig from a transformers LlamaConfig (rejecting features we do not implement)."""
    _require(hf.model_type == "llama", "model_type", hf.model_type, "expected 'llama'")
    rope = getattr(hf, "rope_parameters", None) or {"rope_type": "default", "rope_theta": hf.rope_theta}
    legacy_scaling = getattr(hf, "rope_scaling", None)
    if legacy_scaling and legacy_scaling is not rope:
        rope = {**legacy_scaling, "rope_theta": rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    _require(rope_type == "default", "rope_scaling.rope_type", rope_type, "only default RoPE is implemented")
    _require(hf.hidden_act == "silu", "hidden_act", hf.hidden_act, "LLaMA uses silu")
    exec_kwargs.setdefault("param_dtype", _dtype_name(hf))
    return LlamaConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        num_hidden_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads,
        num_key_value_heads=hf.num_key_value_heads or hf.num_attention_heads,
        head_dim=_explicit_head_dim(hf), rms_norm_eps=hf.rms_norm_eps,
        rope_theta=float(rope["rope_theta"]), max_position_embeddings=hf.max_position_embeddings,
        tie_word_embeddings=bool(hf.tie_word_embeddings), attention_bias=bool(getattr(hf, "attention_bias", False)),
        mlp_bias=bool(getattr(hf, "mlp_bias", False)), **exec_kwargs)


def _explicit_head_dim(hf: Any) -> int | None:
    head_dim = getattr(hf, "head_dim", None)
    return None if head_dim in (None, hf.hidden_size // hf.num_attention_heads) else head_dim


def clip_from_hf(hf: Any, **exec_kwargs: Any) -> CLIPVisionConfig:
    """CLIPVisionConfig from a transformers CLIPVisionConfig or CLIPConfig."""
    hf = getattr(hf, "vision_config", hf)
    _require(hf.hidden_act in ACTIVATIONS, "vision_config.hidden_act", hf.hidden_act, f"one of {sorted(ACTIVATIONS)}")
    exec_kwargs.setdefault("param_dtype", _dtype_name(hf))
    return CLIPVisionConfig(
        hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size, num_hidden_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads, image_size=hf.image_size, patch_size=hf.patch_size,
        num_channels=hf.num_channels, layer_norm_eps=hf.layer_norm_eps, hidden_act=hf.hidden_act, **exec_kwargs)


def llava_from_hf(hf: Any, **exec_kwargs: Any) -> LlavaConfig:
    """LlavaConfig from a transformers LlavaConfig."""
    _require(hf.model_type == "llava", "model_type", hf.model_type, "expected 'llava'")
    _require(hf.projector_hidden_act == "gelu", "projector_hidden_act", hf.projector_hidden_act, "only gelu")
    _require(getattr(hf, "multimodal_projector_bias", True), "multimodal_projector_bias", False, "only True")
    _require(isinstance(hf.vision_feature_layer, int), "vision_feature_layer", hf.vision_feature_layer,
             "a single layer index")
    dtype = _dtype_name(hf)
    exec_kwargs.setdefault("param_dtype", dtype)
    return LlavaConfig(
        vision=clip_from_hf(hf.vision_config, **exec_kwargs), text=llama_from_hf(hf.text_config, **exec_kwargs),
        projector_type="mlp2x_gelu", image_token_id=hf.image_token_index,
        pad_token_id=getattr(hf, "pad_token_id", None) or getattr(hf.text_config, "pad_token_id", None),
        vision_feature_layer=hf.vision_feature_layer,
        vision_feature_select_strategy=hf.vision_feature_select_strategy)


def llama_to_hf(cfg: LlamaConfig, dtype: str | None = None) -> transformers.LlamaConfig:
    """transformers LlamaConfig for our LlamaConfig (dtype: that of the saved weights)."""
    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.dim_per_head, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias,
        hidden_act="silu", bos_token_id=1, eos_token_id=2, dtype=dtype or cfg.param_dtype,
        architectures=["LlamaForCausalLM"])


def clip_to_hf(cfg: CLIPVisionConfig, dtype: str | None = None) -> transformers.CLIPVisionConfig:
    """transformers CLIPVisionConfig for our CLIPVisionConfig (dtype: that of the saved weights)."""
    return transformers.CLIPVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        num_channels=cfg.num_channels, layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.hidden_act,
        dtype=dtype or cfg.param_dtype)


def llava_to_hf(cfg: LlavaConfig, vision_dtype: str | None = None,
                text_dtype: str | None = None) -> transformers.LlavaConfig:
    """transformers LlavaConfig for our LlavaConfig (mlp2x_gelu projector only)."""
    _require(cfg.projector_type == "mlp2x_gelu", "projector_type", cfg.projector_type,
             "transformers' LlavaForConditionalGeneration has only the mlp2x_gelu projector")
    hf = transformers.LlavaConfig(
        vision_config=clip_to_hf(cfg.vision, vision_dtype).to_dict(),
        text_config=llama_to_hf(cfg.text, text_dtype).to_dict(),
        image_token_index=cfg.image_token_id, image_seq_length=cfg.num_image_tokens, projector_hidden_act="gelu",
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        vision_feature_layer=cfg.vision_feature_layer, tie_word_embeddings=cfg.text.tie_word_embeddings,
        dtype=text_dtype or cfg.text.param_dtype, architectures=["LlavaForConditionalGeneration"])
    hf.pad_token_id = cfg.pad_token_id
    return hf
