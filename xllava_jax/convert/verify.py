"""Checking an HF export: re-import it and compare logits with the source params; where torch is
installed, also load it with transformers and compare its logits."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xllava_jax.models.llava import Llava


def max_abs_diff(a: Any, b: Any) -> float:
    """max |a - b| in float64."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def llava_logits(model: Llava, params: dict, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Our logits [B, T, V] for {input_ids, pixel_values, attention_mask}."""
    return np.asarray(model.apply({"params": params}, **inputs), np.float32)


def transformers_llava_logits(hf_dir: str | os.PathLike, inputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """transformers' LlavaForConditionalGeneration logits of an HF directory (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    import transformers
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                                    local_files_only=True).eval()
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(np.asarray(inputs["input_ids"], np.int64)),
                 pixel_values=torch.from_numpy(np.asarray(inputs["pixel_values"], np.float32)).permute(0, 3, 1, 2),
                 attention_mask=torch.from_numpy(np.asarray(inputs["attention_mask"], np.int64)))
    return out.logits.float().numpy()


def verify_llava_export(model: Llava, params: dict, hf_dir: str | os.PathLike, inputs: dict[str, np.ndarray]
                        ) -> dict[str, Any]:
    """Logit differences of an exported LLaVA against `params` on `inputs`: re-imported into Flax, and
    loaded in transformers (None where torch is missing). Also the scale (max |logit|)."""
    from xllava_jax.convert.hf import load_hf_llava
    want = llava_logits(model, params, inputs)
    reimported, reimported_params = load_hf_llava(hf_dir)
    torch_logits = transformers_llava_logits(hf_dir, inputs)
    return {"max_abs_logit": float(np.max(np.abs(want))),
            "reimport_max_abs_diff": max_abs_diff(llava_logits(reimported, reimported_params, inputs), want),
            "transformers_max_abs_diff": None if torch_logits is None else max_abs_diff(torch_logits, want)}
