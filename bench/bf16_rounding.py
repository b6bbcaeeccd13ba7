"""How far bf16 moves LLaVA's logits, ours and transformers' (a measurement, not a test).

On the 2-layer, full-width slice of LLaVA-1.5-7B of tests/test_models_real_shape.py (random N(0, 0.02^2) weights,
the 617-token image prompt), transformers' float32 logits are the reference; the same weights in bf16 run on
transformers and on ours (bf16 params and compute). Prints each side's max difference from the float32 logits
over their scale, the argmax agreement, and ours against transformers' in bf16 (what bench/real_shape.py reports
at 32 layers). Peak memory ~7 GB.

    python bench/bf16_rounding.py
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import hf_reference as ref  # noqa: E402
from test_models_real_shape import image_prompt, llava_7b_slice  # noqa: E402
from xllava_jax.convert import hf as convert  # noqa: E402


def gap(got: np.ndarray, want: np.ndarray) -> dict:
    """Max |got - want| over max |want|, and the share of positions whose argmax agrees."""
    return {"max_diff_over_scale": round(float(np.abs(got - want).max() / np.abs(want).max()), 5),
            "argmax_agreement": round(float(np.mean(got.argmax(-1) == want.argmax(-1))), 4)}


def main() -> None:
    """Run both sides in float32 and bf16 and print the gaps as JSON."""
    hf = llava_7b_slice(layers=2, seed=7)
    ids, images = image_prompt(576), ref.images_nhwc(1, 336, seed=8)
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        f32 = hf(input_ids=torch.from_numpy(ids), pixel_values=ref.to_nchw(images)).logits.numpy()[0]
        hf = hf.to(torch.bfloat16)
        hf.save_pretrained(d)
        theirs = hf(input_ids=torch.from_numpy(ids),
                    pixel_values=ref.to_nchw(images).to(torch.bfloat16)).logits.float().numpy()[0]
        del hf
        gc.collect()
        model, params = convert.load_hf_llava(d, dtype="bfloat16")
        ours = np.asarray(jax.jit(model.apply)({"params": params}, ids.astype(np.int32), pixel_values=images))[0]
    print(json.dumps({"transformers_bf16_vs_float32": gap(theirs, f32), "ours_bf16_vs_float32": gap(ours, f32),
                      "ours_vs_transformers_bf16": gap(ours, theirs)}, indent=2))


if __name__ == "__main__":
    main()
