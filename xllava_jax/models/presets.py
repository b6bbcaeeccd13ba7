"""Published architectures as data: the sizes of the models the shipped configs name, as their Hugging Face
config.json files state them (LlamaConfig / CLIPVisionConfig field values; no execution settings).

`text_preset(name)` and `vision_preset(name)` look a model up by its name or its HF directory's basename
(e.g. `/ckpt/vicuna-13b-v1.5`), so a config can be sized before its weights are on disk (AOT compiles,
memory plans).
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Mapping

_LLAMA2 = dict(rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096, vocab_size=32000)
LLAMA2_7B: Mapping = MappingProxyType(dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
    **_LLAMA2))
LLAMA2_13B: Mapping = MappingProxyType(dict(
    hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
    **_LLAMA2))
# CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336, LLaVA-1.5's vision tower)
CLIP_L14_336: Mapping = MappingProxyType(dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, layer_norm_eps=1e-5, hidden_act="quick_gelu"))

# decoders by name; Vicuna v1.5 is a fine-tuned LLaMA-2 of the same sizes
TEXT_PRESETS: Mapping[str, Mapping] = MappingProxyType({
    "llama-2-7b-hf": LLAMA2_7B, "vicuna-7b-v1.5": LLAMA2_7B,
    "llama-2-13b-hf": LLAMA2_13B, "vicuna-13b-v1.5": LLAMA2_13B,
    # the X-LLaVA vocabulary-expanded tokenizer (docs/tokenizer.md) on LLaMA-2-13B
    "xllava_tokenizer": MappingProxyType({**LLAMA2_13B, "vocab_size": 39478}),
})
VISION_PRESETS: Mapping[str, Mapping] = MappingProxyType({"clip-vit-large-patch14-336": CLIP_L14_336})


def _lookup(table: Mapping[str, Mapping], path: str | os.PathLike) -> dict | None:
    """The entry of `path`'s basename (a name or a directory), or None."""
    name = os.path.basename(os.fspath(path).rstrip("/")) if path else ""
    return dict(table[name]) if name in table else None


def text_preset(path: str | os.PathLike) -> dict | None:
    """LlamaConfig sizes of a known decoder (by name or directory basename), or None."""
    return _lookup(TEXT_PRESETS, path)


def vision_preset(path: str | os.PathLike) -> dict | None:
    """CLIPVisionConfig sizes of a known vision tower (by name or directory basename), or None."""
    return _lookup(VISION_PRESETS, path)
