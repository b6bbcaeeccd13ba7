"""Training metrics: model FLOPs for MFU, and the writers (DIR/metrics.jsonl, TensorBoard, tqdm), process 0 only.

Model FLOPs of one step (the MFU numerator; 2 FLOPs per multiply-add of N non-embedding params, Kaplan et al.):
  decoder, per token:  F = 2 * (decoder params without the embedding table) + 4 * L * T * d_attn (T = row length)
  vision, per image:   Fv = 2 * (patch conv) * P + 2 * (encoder params run on every position) * (P + 1)
                       + 4 * Lv * (P + 1)^2 * dv (P patches + CLS; position/class embeddings are no matmul,
                       post_layernorm does not run), and the projector 2 * (its params) * P
  forward once; backward costs 2 x forward for a trained group and 1 x forward (activation gradients only)
  for a frozen group that a trained group sits before (the decoder in stage 1); nothing for the rest.
MFU = FLOPs / step time / (log.peak_tflops * 1e12 * devices).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax

from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import ModelConfig, abstract_params
from xllava_jax.train.trainable import count


def _decoder_flops_per_token(text: Any, lm_params: dict, seq_len: int) -> float:
    """Forward FLOPs per decoder token."""
    matmul = count(lm_params) - count(lm_params["embed_tokens"]) + (
        count(lm_params["embed_tokens"]) if text.tie_word_embeddings else 0)
    return 2 * matmul + 4 * text.num_hidden_layers * seq_len * text.num_attention_heads * text.dim_per_head


def step_flops(cfg: ModelConfig, groups: tuple[str, ...], tokens: float, seq_len: int, images: float) -> float:
    """Model FLOPs of one training step (module doc)."""
    params = abstract_params(cfg)
    if not isinstance(cfg, LlavaConfig):
        return 3 * tokens * _decoder_flops_per_token(cfg, params, seq_len)
    lm = tokens * _decoder_flops_per_token(cfg.text, params["language_model"], seq_len)
    p, v, vt = cfg.num_image_tokens, cfg.vision, params["vision_tower"]
    conv = count(vt["embeddings"]["patch_embedding"])
    body = count(vt) - count(vt["embeddings"]) - count(vt["post_layernorm"])
    n = v.num_patches + 1
    vision = images * (2 * conv * v.num_patches + 2 * body * n + 4 * v.num_hidden_layers * n * n * v.hidden_size)
    proj = images * 2 * count(params["projector"]) * p
    factor = {g: 3.0 if g in groups else 1.0 for g in ("vision_tower", "projector", "language_model")}
    if "language_model" not in groups and ("projector" in groups or "vision_tower" in groups):
        factor["language_model"] = 2.0  # activation gradients flow back through the frozen decoder
    if "projector" not in groups and "vision_tower" in groups:
        factor["projector"] = 2.0
    return factor["language_model"] * lm + factor["vision_tower"] * vision + factor["projector"] * proj


class MetricsWriter:
    """Appends one JSON object per logged step to DIR/metrics.jsonl, mirrors it to TensorBoard, drives tqdm."""

    def __init__(self, workdir: str | os.PathLike, total_steps: int, start_step: int, progress: bool = True,
                 tensorboard: bool = True):
        self.main = jax.process_index() == 0
        self.bar = self.tb = self.file = None
        if not self.main:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.file = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(workdir / "tensorboard"))
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc=f"train {workdir.name}", unit="step",
                            dynamic_ncols=True)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Log `metrics` of `step` (process 0 only)."""
        if not self.main:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if self.bar is not None and "loss" in row:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)

    def advance(self, n: int = 1) -> None:
        """Move the progress bar (ETA from its rate)."""
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        """Flush and close everything."""
        for thing in (self.bar, self.tb, self.file):
            if thing is not None:
                thing.close()


def _plain(v: Any) -> Any:
    """A JSON-ready scalar of a metric value."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if isinstance(v, (bool, int)) else f
