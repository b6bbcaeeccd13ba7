"""Step-time benchmark (not a test): the stage loop's host wait for the device, per step vs one step behind.

Each side runs the loop's per-step work for `--steps` steps: the next batch from the real grain pipeline
(packed stage-0 text, tokenized on the host), `inputs.to_global`, the jitted train step of a small LLaMA,
then reading the non-finite streak with `jax.device_get`: side `sync` reads this step's (the host waits
for the device before building the next batch, as train/loop.py did), side `behind` reads the previous
step's (as it does now). Interleaved repeats, median and min-max, load average (bench/harness.py).

    python bench/step_sync_bench.py [--repeats 5] [--steps 8] [--threads N]
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
from xllava_jax.models import LlamaConfig  # noqa: E402
from xllava_jax.sharding import make_mesh  # noqa: E402
from xllava_jax.train import inputs  # noqa: E402
from xllava_jax.train.defaults import base_config  # noqa: E402
from xllava_jax.train.harness import make_harness  # noqa: E402


class WordTokenizer:
    """One id per word (the host cost is the pipeline's packing and collation, plus this split)."""

    bos_id, eos_id, pad_id, image_token_id = 1, 2, 0, None

    def encode_plain(self, text: str) -> list[int]:
        return [3 + hash(w) % 1000 for w in text.split()]


def records(n: int, seed: int = 0) -> list[dict]:
    """Text documents of 20-600 words (long ones are split into max_len pieces)."""
    rng = np.random.default_rng(seed)
    return [{"id": str(i), "text": " ".join(f"w{j}" for j in rng.integers(0, 5000, rng.integers(20, 600)))}
            for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="steps per timed repeat")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max_len", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    harness.pin_threads(args.threads)
    c = base_config(0)
    c.data.update(format="text", pack=True, max_len=args.max_len)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    tok, mesh = WordTokenizer(), make_mesh(1, 1, 1, devices=jax.devices()[:1])
    it = inputs.make_iterator(c.data, records(4000), tok, cfg, args.batch, 0)
    h = make_harness(cfg, ("language_model",), c.optim, 1000, mesh)
    first = inputs.to_global(inputs.host_batch(next(it), cfg, 1, False), mesh)
    step = h.jit_step(first)
    box = {"state": h.init_state(None, 0)}

    def run(behind: bool) -> None:
        previous = None
        for _ in range(args.steps):
            batch = inputs.to_global(inputs.host_batch(next(it), cfg, 1, False), mesh)
            box["state"], metrics = step(box["state"], batch)
            watched = previous if behind and previous is not None else metrics
            int(jax.device_get(watched["nonfinite_streak"]))
            previous = metrics
        jax.block_until_ready(box["state"].params)

    run_ = harness.interleave({"sync": lambda: run(False), "behind": lambda: run(True)}, args.repeats, 1,
                              "step sync")
    t = {k: [x / args.steps for x in v] for k, v in run_["times"].items()}
    report = {**harness.environment(), "steps_per_repeat": args.steps, "batch": args.batch, "max_len": args.max_len,
              "step_s_sync_every_step": harness.summary(t["sync"]),
              "step_s_one_step_behind": harness.summary(t["behind"]),
              "sync_over_behind": round(float(np.median(t["sync"]) / np.median(t["behind"])), 3),
              "load": run_["load"]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
