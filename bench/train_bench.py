"""Training benchmark (not a test), CPU fp32 on bench/model_bench.py's small LLaVA:

1. one full stage-2 train step (forward, backward w.r.t. projector + LLM with the vision tower frozen,
   global-norm clipping, AdamW update) of our jitted step vs transformers' PyTorch LLaVA doing the same
   (vision requires_grad False, torch.optim.AdamW, clip_grad_norm_), same weights and batch: seconds
   per step (interleaved, median and min-max, both sides on the same pinned threads: bench/harness.py)
   and the ratio;
2. compiled memory of the stage-1 vs the stage-2 step from XLA's memory analysis
   (jit(...).lower(...).compile().memory_analysis()): frozen params get no optimizer state and no
   weight gradients.

    python bench/train_bench.py [--repeats 5] [--batch 4] [--text_len 96] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from model_bench import make_batch, small_config  # noqa: E402
from xllava_jax.convert import hf as convert  # noqa: E402
from xllava_jax.models import init_params  # noqa: E402
from xllava_jax.train.defaults import base_config  # noqa: E402
from xllava_jax.train.harness import make_harness  # noqa: E402
from xllava_jax.train.metrics import step_flops  # noqa: E402
from xllava_jax.sharding import make_mesh  # noqa: E402
from xllava_jax.train.state import abstract_state  # noqa: E402

STAGE1, STAGE2 = ("projector",), ("projector", "language_model")


def train_batch(cfg, batch_size: int, text_len: int) -> dict[str, np.ndarray]:
    """model_bench's batch in the step's layout: every token trained, one image slot per row."""
    b = make_batch(cfg, batch_size, text_len)
    ids = b["input_ids"]
    labels = np.where(ids == cfg.image_token_id, -100, ids).astype(np.int32)
    ones = np.ones_like(ids)
    return {"input_ids": ids, "labels": labels, "attention_mask": ones, "segment_ids": ones,
            "positions": np.tile(np.arange(ids.shape[1], dtype=np.int32), (ids.shape[0], 1)),
            "pixel_values": b["pixel_values"][:, None]}


def optim():
    """AdamW settings shared by both sides."""
    o = base_config().optim
    o.update(lr=1e-4, warmup_ratio=0.0, weight_decay=0.0, clip_norm=1.0)
    return o


def bench_step(repeats: int, batch_size: int, text_len: int) -> dict:
    """Seconds per full train step, ours vs PyTorch, interleaved."""
    import torch
    import transformers

    cfg = small_config()
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(0)))
    batch = train_batch(cfg, batch_size, text_len)
    h = make_harness(cfg, STAGE2, optim(), 1000, make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    state, step = h.init_state(params), h.jit_step(batch)
    holder = {"state": state}

    def ours_step():
        holder["state"], m = step(holder["state"], batch)
        jax.block_until_ready(m)

    with tempfile.TemporaryDirectory() as tmp:
        convert.save_hf_llava(cfg, params, tmp)
        hf = transformers.LlavaForConditionalGeneration.from_pretrained(tmp, attn_implementation="sdpa")
    hf.train()
    for name, p in hf.named_parameters():
        p.requires_grad_("vision_tower" not in name)
    trained = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-4, weight_decay=0.0, eps=1e-8)
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64))
    labels = torch.from_numpy(batch["labels"].astype(np.int64))
    pixels = torch.from_numpy(batch["pixel_values"][:, 0].transpose(0, 3, 1, 2).copy())

    def torch_step():
        opt.zero_grad(set_to_none=True)
        logits = hf(input_ids=ids, pixel_values=pixels).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()

    result = harness.compare(ours_step, torch_step, repeats, label="stage-2 train step")
    ours = result["ours_s"]["median"]
    tokens = batch["input_ids"].size
    flops = step_flops(cfg, STAGE2, tokens, batch["input_ids"].shape[1], batch_size)
    return {**result, "tokens_per_step": tokens, "ours_tokens_per_s": round(tokens / ours, 1),
            "ours_model_gflops_per_s": round(flops / ours / 1e9, 2)}


def bench_memory(batch_size: int, text_len: int) -> dict:
    """XLA memory analysis of the stage-1 and stage-2 steps (bytes)."""
    cfg = small_config()
    batch = train_batch(cfg, batch_size, text_len)
    out = {}
    for name, groups in (("stage1", STAGE1), ("stage2", STAGE2)):
        h = make_harness(cfg, groups, optim(), 1000, make_mesh(1, 1, 1, devices=jax.devices()[:1]))
        mem = h.jit_step(batch).lower(abstract_state(cfg, groups, h.tx, h.shardings), batch).compile().memory_analysis()
        out[name] = {"argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
                     "temp_bytes": mem.temp_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes}
    for k in ("argument_bytes", "temp_bytes"):
        out[f"stage1_over_stage2_{k}"] = out["stage1"][k] / out["stage2"][k]
    return out


def main() -> None:
    """Run both and print one JSON report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per side (after one warm-up)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text_len", type=int, default=96)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both sides (default: all)")
    args = p.parse_args()
    harness.pin_threads(args.threads)
    report = {**harness.environment(),
              "memory": bench_memory(args.batch, args.text_len),
              "step": bench_step(args.repeats, args.batch, args.text_len)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
