"""Tiny LLaVA training configs and batches for the train tests (CPU, seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from xllava_jax.models import CLIPVisionConfig, LlamaConfig, LlavaConfig
from xllava_jax.train.defaults import base_config, tiny_model

VOCAB, IMAGE_ID, PAD_ID = 128, 120, 121


def tiny_cfg(**exec_kw) -> LlavaConfig:
    """A tiny LLaVA: 2x2 patches of a 16-px image (4 image tokens), 2-layer decoder of width 32."""
    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                image_size=16, patch_size=8, **exec_kw),
        text=LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, **exec_kw),
        image_token_id=IMAGE_ID, pad_token_id=PAD_ID)


def tiny_batch(cfg: LlavaConfig, rows: int = 8, length: int = 16, seed: int = 0, slots: int = 1) -> dict:
    """A batch in the step's layout: every other row has an image at position 2, labels on the last half."""
    rng = np.random.default_rng(seed)
    n = cfg.num_image_tokens
    ids = rng.integers(3, 100, (rows, length)).astype(np.int32)
    labels = np.full((rows, length), -100, np.int32)
    labels[:, length // 2:] = ids[:, length // 2:]
    pixels = np.zeros((rows, slots, cfg.vision.image_size, cfg.vision.image_size, 3), np.float32)
    for r in range(0, rows, 2):
        ids[r, 2:2 + n] = cfg.image_token_id
        pixels[r, 0] = rng.normal(size=pixels.shape[2:])
    mask = np.ones((rows, length), np.int32)
    mask[1, -3:] = 0  # some right padding
    labels[1, -3:] = -100
    segments = mask.copy()
    positions = np.tile(np.arange(length, dtype=np.int32), (rows, 1))
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "positions": positions,
            "segment_ids": segments, "pixel_values": pixels}


def demo_stage_config(stage: int, root: str, steps: int = 6):
    """A demo-data stage config small enough for tests (data and tokenizer under `root`)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("demo_cfg", Path(__file__).parents[1] / "configs" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.stage_config({0: "stage0", 1: "stage1", 2: "stage2"}[stage])
    c.data.root = root
    c.eval_data.root = root
    c.tokenizer = str(Path(root) / "tokenizer")
    c.train.num_steps = steps
    c.log.progress = False
    c.log.every_steps = 1
    return c


def losses(workdir) -> dict[int, float]:
    """Loss of each step in DIR/metrics.jsonl; a step logged twice (replayed after a kill) keeps its last value."""
    import json
    from pathlib import Path
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


__all__ = ["tiny_cfg", "tiny_batch", "demo_stage_config", "base_config", "tiny_model", "losses"]


def run_on_devices(script: str, devices: int, env: dict, *args: str) -> dict:
    """Run `python -c script tests_dir *args` on `devices` simulated CPU devices; its last stdout line as JSON."""
    tests = Path(__file__).parent
    env = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = subprocess.run([sys.executable, "-c", script, str(tests), *args], env=env, cwd=tests.parent,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
