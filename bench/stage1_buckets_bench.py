"""Stage-1 length-bucket benchmark (not a test): the same `plain` rows padded to max_len vs to their bucket.

Stage-1 rows are N image tokens + a short caption (LLaVA-1.5: 576 + ~20-60 = ~650 of max_len 2048). Scaled
to CPU: a small LLaVA with N = 64 image tokens, captions of 10-60 tokens, max_len 256 (the same ~3x ratio);
the stage-1 step (projector trained, decoder backward-through, vision forward) on one batch collated by
`data.sequences.collate` at max_len and at `bucket_length` of `--buckets`. Reports the padding share and the
real (unpadded) tokens per second of each, interleaved repeats, median and min-max (bench/harness.py).

    python bench/stage1_buckets_bench.py [--repeats 5] [--batch 8] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from xllava_jax.data.sequences import bucket_length, collate  # noqa: E402
from xllava_jax.models import CLIPVisionConfig, LlamaConfig, LlavaConfig  # noqa: E402
from xllava_jax.sharding import make_mesh  # noqa: E402
from xllava_jax.train.defaults import base_config  # noqa: E402
from xllava_jax.train.forward import row_slots  # noqa: E402
from xllava_jax.train.harness import make_harness  # noqa: E402

IMAGE_ID = 1000


def small_llava() -> LlavaConfig:
    """64 image tokens (64 px, patch 8), a 4-layer decoder of width 256."""
    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                image_size=64, patch_size=8),
        text=LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4),
        image_token_id=IMAGE_ID, pad_token_id=0)


def plain_rows(cfg: LlavaConfig, batch: int, seed: int = 0) -> list[list[dict]]:
    """`<s> <image>*N caption \\n` rows, only the caption and newline trained (as the plain template)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
        caption = rng.integers(3, 900, rng.integers(10, 61)).tolist()
        ids = [1, *[IMAGE_ID] * cfg.num_image_tokens, *caption, 13]
        labels = [-100] * (1 + cfg.num_image_tokens) + caption + [13]
        pixels = rng.normal(size=(1, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(np.float32)
        rows.append([{"input_ids": np.asarray(ids, np.int32), "labels": np.asarray(labels, np.int32),
                      "pixel_values": pixels}])
    return rows


def step_batch(cfg: LlavaConfig, rows: list, length: int) -> dict:
    """The rows collated to `length` in the step's layout (per-row image slots, no bookkeeping keys)."""
    s = cfg.vision.image_size
    b = collate(rows, len(rows), length, 0, 1, (s, s, 3))
    out = {k: b[k] for k in ("input_ids", "labels", "attention_mask", "positions", "segment_ids")}
    out["pixel_values"] = row_slots(b["input_ids"], b["pixel_values"], IMAGE_ID, cfg.num_image_tokens, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max_len", type=int, default=256)
    p.add_argument("--buckets", default="96,128,192", help="comma list (the recipe's 640,768,1024,1536 scaled)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    harness.pin_threads(args.threads)
    cfg = small_llava()
    rows = plain_rows(cfg, args.batch)
    longest = max(len(r[0]["input_ids"]) for r in rows)
    bucket = bucket_length(longest, [int(x) for x in args.buckets.split(",")], args.max_len)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    h = make_harness(cfg, ("projector",), base_config(1).optim, 1000, mesh)
    state = {"s": h.init_state(None, 0)}
    sides = {}
    for name, length in (("max_len", args.max_len), ("bucket", bucket)):
        batch = step_batch(cfg, rows, length)
        step = h.jit_step(batch)

        def run(step=step, batch=batch):
            state["s"], m = step(state["s"], batch)
            jax.block_until_ready(m["loss"])
        sides[name] = run
    real = sum(len(r[0]["input_ids"]) for r in rows)
    result = harness.interleave(sides, args.repeats, 1, "stage-1 buckets")
    t = result["times"]
    report = {**harness.environment(), "batch": args.batch, "real_tokens": real, "longest_row": longest,
              "lengths": {"max_len": args.max_len, "bucket": bucket},
              "padding_share": {"max_len": round(1 - real / (args.batch * args.max_len), 3),
                                "bucket": round(1 - real / (args.batch * bucket), 3)},
              "step_s": {k: harness.summary(v) for k, v in t.items()},
              "real_tokens_per_s": {k: round(real / float(np.median(v)), 1) for k, v in t.items()},
              "speedup": round(float(np.median(t["max_len"]) / np.median(t["bucket"])), 3), "load": result["load"]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
