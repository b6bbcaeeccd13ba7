"""Build a LLaVA-1.5-7B-shaped llava-hf directory with random bf16 weights (a script, not a test).

    python bench/real_shape_build.py OUT [--layers N --vision_layers N --hidden H --mlp M --heads N]

Writes OUT/config.json (transformers' LlavaConfig from the project's own config mapping) and one
OUT/model.safetensors in the llava-hf key layout (convert.layout), keys sorted as safetensors' save_file orders
them. Tensors are streamed to disk in chunks straight from a seeded generator: no float32 copy of a tensor, nor
the model, is ever in memory (peak ~ one 64 MiB chunk). Matrices ~ N(0, 0.02^2), norm scales 1, biases 0, so
activations stay finite through 32 layers. Defaults: LLaVA-1.5-7B (LLaMA-2-7B, vocab 32064, CLIP-L/14-336),
7.06B parameters, 14.1 GB. A smaller width (--hidden, --mlp, --layers) gives the same layout for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xllava_jax.convert.hf_config import llava_to_hf  # noqa: E402
from xllava_jax.convert.layout import LLAVA_PREFIXES, flatten, hf_key, is_stacked  # noqa: E402
from xllava_jax.convert.safetensors_io import safetensors_header  # noqa: E402
from xllava_jax.models.clip import CLIPVisionConfig  # noqa: E402
from xllava_jax.models.llama import LlamaConfig  # noqa: E402
from xllava_jax.models.llava import LlavaConfig  # noqa: E402
from xllava_jax.models.params import abstract_params  # noqa: E402

CHUNK = 32 << 20  # elements generated at a time (64 MiB of bf16)
STD = 0.02


def llava7b(layers: int = 32, vision_layers: int = 24, hidden: int = 4096, mlp: int = 11008, heads: int = 32,
            vocab: int = 32064) -> LlavaConfig:
    """LLaVA-1.5-7B's config (bf16 params), optionally narrower or shallower."""
    text = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, param_dtype="bfloat16",
                       dtype="bfloat16")
    vision = CLIPVisionConfig(num_hidden_layers=vision_layers, param_dtype="bfloat16", dtype="bfloat16")
    return LlavaConfig(vision=vision, text=text)


def hf_entries(cfg: LlavaConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """(HF key, HF shape, kind) of every tensor, sorted by key; kind is 'ones', 'zeros' or 'normal'."""
    prefixes = LLAVA_PREFIXES["llava-hf"]
    out = []
    for path, spec in flatten(abstract_params(cfg)):
        stacked = is_stacked(path, prefixes)
        shape = tuple(spec.shape[1:] if stacked else spec.shape)
        if path[-1] == "kernel" and len(shape) == 2:
            shape = shape[::-1]
        elif path[-1] == "kernel" and len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        kind = "ones" if path[-1] == "scale" else "zeros" if path[-1] == "bias" else "normal"
        for i in range(spec.shape[0] if stacked else 1):
            out.append((hf_key(path, prefixes, i if stacked else None), shape, kind))
    return sorted(out)


def write_random_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...], str]], seed: int = 0) -> int:
    """Stream random bf16 tensors into one safetensors file; returns its weight bytes."""
    raw = safetensors_header((key, shape, ml_dtypes.bfloat16) for key, shape, _ in entries)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(raw)
        for key, shape, kind in entries:
            n = math.prod(shape)
            for start in range(0, n, CHUNK):
                m = min(CHUNK, n - start)
                if kind == "normal":
                    chunk = (rng.standard_normal(m, dtype=np.float32) * STD).astype(ml_dtypes.bfloat16)
                else:
                    chunk = np.full(m, 1.0 if kind == "ones" else 0.0, ml_dtypes.bfloat16)
                f.write(chunk.tobytes())
    return sum(math.prod(shape) * 2 for _, shape, _ in entries)


def build(out: str | os.PathLike, cfg: LlavaConfig, seed: int = 0) -> dict:
    """Write the directory (config.json + model.safetensors); returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    llava_to_hf(cfg, "bfloat16", "bfloat16").save_pretrained(str(out))
    entries = hf_entries(cfg)
    size = write_random_safetensors(out / "model.safetensors", entries, seed)
    return {"dir": str(out), "tensors": len(entries), "params": size // 2, "bytes": size,
            "seconds": round(time.perf_counter() - start, 1), "config": dataclasses.asdict(cfg)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--vision_layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--mlp", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    summary = build(a.out, llava7b(a.layers, a.vision_layers, a.hidden, a.mlp, a.heads), a.seed)
    summary.pop("config")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
