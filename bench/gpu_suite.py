"""GPU suite: stage-2 MFU, transformers PyTorch comparison and 7B decode speed, one command.

Parts, each run in its own subprocess under its own time limit (a slow or OOMing part cannot eat the
rest; a part that runs out of time still reports the configs it finished):

  train_cudnn, train_xla  stage-2 train step (project's harness/step: projector + LLM trained, CLIP frozen,
                          clipping, AdamW) in bf16 compute / fp32 params, sequence 2048, a 1.4B LLaMA-2-shaped
                          decoder (24 layers, hidden 2048, 16 heads, intermediate 5504) + CLIP ViT-L/14-336 +
                          mlp2x_gelu, random weights; for each remat policy the largest candidate batch that fits
                          (larger ones fall back on OOM); MFU = train.metrics.step_flops / step time / chip peak.
  compare                 the best train setting and transformers' PyTorch LlavaForConditionalGeneration
                          (fp32 params + bf16 autocast, sdpa, fused AdamW, same batch and sequence) in one
                          process, steps interleaved: tokens/s ratio ours / torch (median, min-max).
  decode                  batch-1 greedy decode of a 7B-shaped LLaMA (bf16 random weights) with infer.Engine:
                          tokens/s and the share of the HBM-bandwidth bound (bytes read per token / bandwidth).

    python bench/gpu_suite.py                   # on the GPU machine: $OUT/gpu_report.json (default ./gpu_out)
    python bench/gpu_suite.py --tiny            # same code path, tiny shapes on CPU (tests/test_gpu_suite.py)

Imports nothing that needs grain or ml_collections (the GPU image has neither).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):  # the project is not pip-installed on the GPU machine
    if _p not in sys.path:
        sys.path.insert(0, _p)

STAGE2 = ("projector", "language_model")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0}  # dense, by device-kind substring
GOALS = {"mfu": 0.55, "torch_ratio": 1.5, "decode_share_of_bound": 0.80}  # the project's GPU targets
PART_NAMES = ("train_cudnn", "train_xla", "compare", "decode")
DEFAULT_LIMITS_S = {"train_cudnn": 160, "train_xla": 80, "compare": 130, "decode": 80}  # sum 450 s < 8 min
TINY_LIMIT_S = 120
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OutOfMemory")


# ---------------------------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class Sizes:
    """Shapes and sweep lists of one suite run (full GPU or --tiny CPU)."""

    seq_len: int = 2048
    text: dict = dataclasses.field(default_factory=lambda: dict(
        vocab_size=32064, hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=4096))  # 32000 + <image> + <pad>, padded to 64
    vision: dict = dataclasses.field(default_factory=dict)  # CLIPVisionConfig defaults: ViT-L/14 at 336 px
    image_token_id: int = 32000
    remats: tuple[str, ...] = ("none", "dots", "full")  # fastest first; xla tries cudnn's winner first
    batches: tuple[int, ...] = (16, 8, 4, 2)  # large to small; XLA CPU analysis: ~32 GB/row xla+none, ~7 full
    steps: int = 5  # timed train steps after 2 warm-up steps
    compare_repeats: int = 5  # interleaved ours/torch pairs after warm-up
    decode_text: dict = dataclasses.field(default_factory=dict)  # LlamaConfig defaults: LLaMA-2 7B
    decode_new_tokens: int = 128
    decode_prompt_len: int = 32
    decode_repeats: int = 3
    decode_steps_per_call: tuple[int, ...] = (0, 16)
    dtype: str = "bfloat16"
    simulate_oom_above: int = 0  # > 0: a batch above this raises a simulated OOM (exercises the fallback)


TINY = Sizes(
    seq_len=64,
    text=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=4, max_position_embeddings=256),
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                patch_size=8),
    image_token_id=500, remats=("full",), batches=(4, 2), steps=2, compare_repeats=2,
    decode_text=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256),
    decode_new_tokens=8, decode_prompt_len=8, decode_repeats=1, decode_steps_per_call=(0, 4),
    simulate_oom_above=2)


def sizes_for(tiny: bool) -> Sizes:
    """The shapes of a full or a --tiny run."""
    return TINY if tiny else Sizes()


def by_kind(table: dict[str, float], kind: str) -> float | None:
    """The value of the longest key of `table` contained in a device kind ('NVIDIA H200' -> H200), or None."""
    return next((v for k, v in sorted(table.items(), key=lambda kv: -len(kv[0])) if k in kind), None)


def is_oom(error: BaseException) -> bool:
    """Whether an exception is an out-of-memory (JAX RESOURCE_EXHAUSTED, torch OOM, simulated)."""
    return isinstance(error, MemoryError) or any(m in f"{type(error).__name__}: {error}" for m in OOM_MARKERS)


def error_tail(error: BaseException, lines: int = 6) -> list[str]:
    """The last lines of an exception's traceback."""
    text = "".join(traceback.format_exception(error)).strip().splitlines()
    return [ln for ln in text if not ln.startswith(("For simplicity", "-----"))][-lines:]


def stats(times: list[float]) -> dict[str, float]:
    """Median, min and max of step seconds."""
    s = sorted(times)
    mid = len(s) // 2
    median = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
    return {"median": median, "min": s[0], "max": s[-1], "n": len(s)}


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (a part killed mid-write leaves the previous version)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------- model and batch

def train_config(s: Sizes, attention: str, remat: str) -> Any:
    """The stage-2 LLaVA config: bf16 compute, fp32 params (optimizer moments), scanned layers."""
    from xllava_jax.models import CLIPVisionConfig, LlamaConfig, LlavaConfig

    run = dict(dtype=s.dtype, param_dtype="float32", attention=attention, remat_policy=remat, scan_layers=True)
    cfg = LlavaConfig(vision=CLIPVisionConfig(**s.vision, **run), text=LlamaConfig(**s.text, **run),
                      projector_type="mlp2x_gelu", image_token_id=s.image_token_id,
                      pad_token_id=s.image_token_id + 1)
    cfg.validate()
    return cfg


def train_batch(cfg: Any, batch: int, seq_len: int, seed: int = 0) -> dict:
    """One image then random text per row, in the step's batch layout (labels -100 on image tokens)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = cfg.num_image_tokens
    ids = rng.integers(3, cfg.image_token_id, size=(batch, seq_len)).astype(np.int32)
    ids[:, 1:1 + n] = cfg.image_token_id
    ones = np.ones_like(ids)
    size = cfg.vision.image_size
    return {"input_ids": ids, "labels": np.where(ids == cfg.image_token_id, -100, ids).astype(np.int32),
            "attention_mask": ones, "segment_ids": ones,
            "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1)),
            "pixel_values": rng.normal(size=(batch, 1, size, size, 3)).astype(np.float32)}


def optim_settings() -> types.SimpleNamespace:
    """AdamW as LLaVA stage 2 (train/defaults.py's optim fields; no ml_collections on the GPU image)."""
    return types.SimpleNamespace(lr=2e-5, warmup_ratio=0.0, end_lr_ratio=0.0, weight_decay=0.0, b1=0.9, b2=0.999,
                                 eps=1e-8, clip_norm=1.0)


def environment() -> dict:
    """Device, memory and library versions of this process."""
    import flax
    import jax
    import optax

    dev = jax.devices()[0]
    mem = (dev.memory_stats() or {}) if hasattr(dev, "memory_stats") else {}
    return {"platform": dev.platform, "device_kind": dev.device_kind, "devices": jax.device_count(),
            "memory_limit_gb": round(mem["bytes_limit"] / 1e9, 1) if "bytes_limit" in mem else None,
            "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": sys.version.split()[0], "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "")}


def model_sizes(cfg: Any, s: Sizes) -> dict:
    """Parameter counts of the towers and the sequence length."""
    from xllava_jax.models import abstract_params
    from xllava_jax.train.trainable import count

    p = abstract_params(cfg)
    return {"seq_len": s.seq_len, "image_tokens": cfg.num_image_tokens,
            **{f"{k}_params": count(p[k]) for k in ("vision_tower", "projector", "language_model")}}


# --------------------------------------------------------------------------------------------- our step

class PredictedOOM(MemoryError):
    """XLA's memory analysis of a compiled step says it needs more than the free device memory."""

    def __init__(self, need: float, free: float):
        super().__init__(f"out of memory (predicted): the step needs {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
        self.need, self.free = need, free


class OurStep:
    """The project's stage-2 train step (train.harness) with its live state, compiled for one batch shape."""

    def __init__(self, cfg: Any, s: Sizes, state: Any = None):
        import jax

        from xllava_jax.sharding import make_mesh
        from xllava_jax.train.harness import make_harness

        self.cfg, self.s = cfg, s
        self.harness = make_harness(cfg, STAGE2, optim_settings(), 1000, make_mesh(1, 1, 1, devices=jax.devices()[:1]))
        alive = state is not None and not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
        self.state = state if alive else self.harness.init_state()  # a failed step may have donated it

    def compile(self, batch: int) -> None:
        """Compile for `batch` rows; MemoryError when XLA's memory analysis says it cannot fit."""
        import jax

        if self.s.simulate_oom_above and batch > self.s.simulate_oom_above:
            raise MemoryError(f"simulated out of memory: batch {batch} > {self.s.simulate_oom_above} (--tiny)")
        self.batch_size, self.seq_len = batch, self.s.seq_len
        self.batch = jax.device_put(train_batch(self.cfg, batch, self.s.seq_len))
        start = time.perf_counter()
        self.compiled = self.harness.jit_step(self.batch).lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start
        self.memory = self._check_fits()

    def _check_fits(self) -> dict:
        """XLA's memory analysis; raises MemoryError when temporaries exceed the free device memory."""
        import jax

        m = self.compiled.memory_analysis()
        out = {} if m is None else {"temp_gb": m.temp_size_in_bytes / 1e9, "argument_gb": m.argument_size_in_bytes / 1e9,
                                    "output_gb": m.output_size_in_bytes / 1e9, "alias_gb": m.alias_size_in_bytes / 1e9}
        stats_ = jax.devices()[0].memory_stats() or {}
        if m is not None and "bytes_limit" in stats_:
            need = m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            free = stats_["bytes_limit"] - stats_.get("bytes_in_use", 0)
            out["free_gb"] = free / 1e9
            if need > free:
                raise PredictedOOM(need, free)
        return out

    def __call__(self) -> float:
        """One step, blocked until done; returns its loss."""
        import jax

        self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return float(metrics["loss"])

    def flops(self) -> float:
        """Model FLOPs of one step (train.metrics.step_flops)."""
        from xllava_jax.train.metrics import step_flops

        return step_flops(self.cfg, STAGE2, self.batch_size * self.seq_len, self.seq_len, self.batch_size)

    def rates(self, seconds: float, peak_tflops: float | None) -> dict:
        """tokens/s, TFLOP/s and MFU of a step time."""
        tflops = self.flops() / seconds / 1e12
        return {"tokens_per_s": self.batch_size * self.seq_len / seconds, "model_tflops_per_s": tflops,
                "mfu": tflops / peak_tflops if peak_tflops else None}


def batch_candidates(batches: tuple[int, ...] | list[int], cap: int | None = None, row_bytes: float | None = None,
                     free_bytes: float | None = None) -> list[int]:
    """Batches to try, large to small: none above `cap`, and none whose estimated need (rows x bytes per row,
    from a compile that did not fit) exceeds the free memory, so a miss costs one compile, not one per size."""
    return [b for b in batches if (cap is None or b <= cap) and (row_bytes is None or b * row_bytes <= free_bytes)]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ----------------------------------------------------------------------------------------------- parts

def part_train(spec: dict, result_path: str) -> int:
    """MFU sweep over remat policies x batch candidates for one attention implementation."""
    s, attention, deadline = sizes_for(spec["tiny"]), spec["attention"], time.monotonic() + spec["budget_s"]
    env = environment()
    peak = by_kind(PEAK_BF16_TFLOPS, env["device_kind"])
    report = {"environment": env, "peak_bf16_tflops": peak, "attention": attention,
              "model": model_sizes(train_config(s, "xla", "none"), s), "configs": [], "best": None}  # shapes only
    state, last_cost, cap = None, 0.0, spec.get("max_batch")
    top = max(batch_candidates(spec["batches"], cap), default=None)
    for remat in spec["remats"]:  # fastest first: none, dots (recompute elementwise ops), full (recompute all)
        if report["best"] and report["best"]["batch"] == top:
            report["configs"].append({"attention": attention, "remat": remat, "status": "skipped (slower)",
                                      "why": f"remat {report['best']['remat']} fit the largest batch {top}"})
            continue
        tried: list[int] = []
        row_bytes = free = None
        while todo := [b for b in batch_candidates(spec["batches"], cap, row_bytes, free) if b not in tried]:
            batch = todo[0]
            tried.append(batch)
            entry: dict[str, Any] = {"attention": attention, "remat": remat, "batch": batch}
            if time.monotonic() + last_cost > deadline:
                entry["status"] = "skipped (part time)"
                report["configs"].append(entry)
                break
            started = time.perf_counter()
            step = None
            try:
                step = OurStep(train_config(s, attention, remat), s, state)
                state = step.state
                step.compile(batch)
                for _ in range(2):
                    step()
                times, losses = zip(*(timed(step) for _ in range(s.steps)))
                state = step.state
                st = stats(list(times))
                entry.update(status="ok", compile_s=step.compile_s, memory=step.memory, step_s=st,
                             loss=losses[-1], **step.rates(st["median"], peak))
            except Exception as e:  # noqa: BLE001 - every failure is recorded, OOM falls back
                entry.update(status="oom" if is_oom(e) else "error", error=error_tail(e))
                if isinstance(e, PredictedOOM):
                    row_bytes, free = e.need / batch, e.free  # an upper bound per row: skip sizes that cannot fit
                state = state if is_oom(e) else None  # OurStep re-creates a donated (deleted) state
            del step
            last_cost = time.perf_counter() - started
            entry["wall_s"] = last_cost
            report["configs"].append(entry)
            print(f"[train] {attention} remat={remat} batch={batch}: {entry['status']} in {last_cost:.0f} s"
                  + (f", {entry['tokens_per_s']:.0f} tok/s" if entry["status"] == "ok" else "")
                  + (f": {headline(entry['error'])}" if "error" in entry else ""), flush=True)
            ok = [c for c in report["configs"] if c["status"] == "ok"]
            report["best"] = max(ok, key=lambda c: c["tokens_per_s"]) if ok else None
            write_json(result_path, report)
            if entry["status"] in ("ok", "error"):
                break  # the largest batch that fits this policy (or a non-memory failure): next policy
    write_json(result_path, report)
    return 0 if report["best"] else 1


class TorchStep:
    """transformers' PyTorch LLaVA of the same config: fp32 params + bf16 autocast, sdpa, (fused) AdamW."""

    def __init__(self, cfg: Any, s: Sizes):
        import torch
        import transformers

        from xllava_jax.convert.hf_config import llava_to_hf

        self.torch, self.s = torch, s
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(self.device):
            self.model = transformers.LlavaForConditionalGeneration._from_config(
                llava_to_hf(cfg), attn_implementation="sdpa", dtype=torch.float32)
        self.model.train()
        for name, p in self.model.named_parameters():
            p.requires_grad_("vision_tower" not in name)
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        o = optim_settings()
        self.opt = torch.optim.AdamW(self.trained, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
                                     weight_decay=o.weight_decay, fused=self.device == "cuda")
        self.checkpointing = False
        self.inputs: dict = {}

    def use_batch(self, batch: dict) -> None:
        """Move a train_batch onto the device in HF's layout (NCHW pixels, int64 ids)."""
        t = self.torch
        self.inputs = {"input_ids": t.from_numpy(batch["input_ids"].astype("int64")).to(self.device),
                       "labels": t.from_numpy(batch["labels"].astype("int64")).to(self.device),
                       "pixel_values": t.from_numpy(batch["pixel_values"][:, 0].transpose(0, 3, 1, 2).copy()
                                                    ).to(self.device)}

    def enable_checkpointing(self) -> None:
        """HF gradient checkpointing (the remat fallback when the step does not fit)."""
        self.model.gradient_checkpointing_enable()
        self.checkpointing = True

    def release(self) -> None:
        """Drop gradients and cached blocks after an OOM."""
        self.opt.zero_grad(set_to_none=True)
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def __call__(self) -> float:
        """One step (forward with HF's own shifted CE loss, backward, clip, AdamW), synchronised; its loss."""
        t = self.torch
        self.opt.zero_grad(set_to_none=True)
        with t.autocast(self.device, dtype=t.bfloat16):
            loss = self.model(**self.inputs).loss
        loss.backward()
        t.nn.utils.clip_grad_norm_(self.trained, optim_settings().clip_norm)
        self.opt.step()
        if self.device == "cuda":
            t.cuda.synchronize()
        return float(loss.detach())


def part_compare(spec: dict, result_path: str) -> int:
    """Ours (best train setting) vs transformers PyTorch, same batch, steps interleaved in one process."""
    import torch
    import transformers

    s = sizes_for(spec["tiny"])
    cfg = train_config(s, spec["attention"], spec["remat"])
    env = environment()
    report: dict[str, Any] = {"environment": {**env, "torch": torch.__version__, "transformers": transformers.__version__},
                              "attention": spec["attention"], "remat": spec["remat"], "tries": [], "result": None}
    theirs = TorchStep(cfg, s)
    peak = by_kind(PEAK_BF16_TFLOPS, env["device_kind"])
    for batch in spec["batches"]:
        tried: dict[str, Any] = {"batch": batch}
        ours = None
        try:
            ours = OurStep(cfg, s)
            ours.compile(batch)
            ours()
            theirs.use_batch(train_batch(cfg, batch, s.seq_len))
            try:
                theirs()
            except Exception as e:  # noqa: BLE001
                if not is_oom(e):
                    raise
                theirs.release()
                theirs.enable_checkpointing()
                theirs()
            ours()
            theirs()
            pairs = [(timed(ours)[0], timed(theirs)[0]) for _ in range(s.compare_repeats)]
            a, b = stats([p[0] for p in pairs]), stats([p[1] for p in pairs])
            tokens = batch * s.seq_len
            report["result"] = {
                "batch": batch, "seq_len": s.seq_len, "tokens_per_step": tokens,
                "ours_step_s": a, "torch_step_s": b, "ours_tokens_per_s": tokens / a["median"],
                "torch_tokens_per_s": tokens / b["median"], "ratio": b["median"] / a["median"],
                "ratio_min_max": [b["min"] / a["max"], b["max"] / a["min"]],
                "ours_mfu": ours.rates(a["median"], peak)["mfu"], "torch_gradient_checkpointing": theirs.checkpointing,
                "torch_optimizer": "AdamW(fused)" if theirs.device == "cuda" else "AdamW",
                "torch_precision": "fp32 params, bf16 autocast", "ours_precision": "fp32 params, bf16 compute"}
            tried["status"] = "ok"
        except Exception as e:  # noqa: BLE001
            tried.update(status="oom" if is_oom(e) else "error", error=error_tail(e))
            theirs.release()
        ours = None
        report["tries"].append(tried)
        write_json(result_path, report)
        if tried["status"] != "oom":
            break
    return 0 if report["result"] else 1


def part_decode(spec: dict, result_path: str) -> int:
    """Batch-1 greedy decode of a 7B-shaped LLaMA with our KV-cache engine vs the HBM-bandwidth bound."""
    import jax

    from decode_bench import HBM_TBS, decode_seconds, prompts, time_ours
    from xllava_jax.infer.generate import Engine
    from xllava_jax.models import LlamaConfig, build_model, init_params

    s = sizes_for(spec["tiny"])
    cfg = LlamaConfig(**s.decode_text, dtype=s.dtype, param_dtype=s.dtype, attention="xla")
    params = jax.jit(lambda k: init_params(cfg, k))(jax.random.PRNGKey(0))
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
    embed = params["embed_tokens"]["embedding"]
    # a decode step reads every weight once except the embedding table (one row)
    read_bytes = weight_bytes - embed.size * embed.dtype.itemsize + embed.shape[1] * embed.dtype.itemsize
    env = environment()
    bandwidth = by_kind(HBM_TBS, env["device_kind"])
    bound_s = read_bytes / (bandwidth * 1e12) if bandwidth else None
    report: dict[str, Any] = {"environment": env, "weight_gb": weight_bytes / 1e9, "read_gb_per_token": read_bytes / 1e9,
                              "bandwidth_tbs": bandwidth, "bound_ms_per_token": bound_s * 1e3 if bound_s else None,
                              "new_tokens": s.decode_new_tokens, "prompt_len": s.decode_prompt_len, "runs": {},
                              "best": None}
    engine = Engine(build_model(cfg), params)
    batch = prompts(1, s.decode_prompt_len, cfg.vocab_size)
    for k in s.decode_steps_per_call:
        per_token = decode_seconds(lambda n: time_ours(engine, batch, n, k, s.decode_repeats), s.decode_new_tokens)
        report["runs"][f"steps_per_call_{k}"] = {
            "steps_per_call": k, "ms_per_token": per_token * 1e3, "tokens_per_s": 1 / per_token,
            "share_of_bound": bound_s / per_token if bound_s else None}
        report["best"] = max(report["runs"].values(), key=lambda r: r["tokens_per_s"])
        write_json(result_path, report)
    return 0


PART_FUNCS = {"train": part_train, "compare": part_compare, "decode": part_decode}


# ----------------------------------------------------------------------------------------- orchestrator

def part_env(name: str, tiny: bool) -> dict:
    """Environment of a part's subprocess (JAX memory: train fills the GPU, compare shares it with torch)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    if tiny:
        env.setdefault("JAX_PLATFORMS", "cpu")
    if name.startswith("train"):
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    elif name == "compare":
        env.update(XLA_PYTHON_CLIENT_PREALLOCATE="false", XLA_PYTHON_CLIENT_MEM_FRACTION="0.5")
    return env


def run_part(name: str, kind: str, spec: dict, limit_s: float, out: Path, scratch: Path, tiny: bool) -> dict:
    """Run one part in a subprocess under `limit_s`; its status (ok | timeout | error), log tail and results."""
    result_path, log_path = scratch / f"{name}.json", out / f"gpu_suite_{name}.log"
    spec = {**spec, "tiny": tiny, "budget_s": max(limit_s - 15, limit_s * 0.8)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", kind, "--spec", json.dumps(spec),
           "--result", str(result_path)]
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=part_env(name, tiny), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
            status = "ok" if rc == 0 else "error"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part's own process group (it started a new session)
            proc.wait()
            rc, status = None, "timeout"
    entry: dict[str, Any] = {"status": status, "returncode": rc, "wall_s": round(time.monotonic() - start, 1),
                             "limit_s": limit_s, "spec": spec, "log": log_path.name}
    if status != "ok":
        entry["error_tail"] = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
    if result_path.exists():
        entry["result"] = json.loads(result_path.read_text(encoding="utf-8"))
    return entry


def best_train(parts: dict) -> dict | None:
    """The fastest ok train config over the train parts."""
    ok = [p["result"]["best"] for n, p in parts.items() if n.startswith("train") and (p.get("result") or {}).get("best")]
    return max(ok, key=lambda c: c["tokens_per_s"]) if ok else None


def halvings(batch: int) -> list[int]:
    """batch // 2, // 4, ... down to 1 (compare shares the GPU between two frameworks)."""
    out, b = [], max(batch // 2, 1)
    while b >= 1 and b not in out:
        out.append(b)
        b //= 2
    return out


def summary(parts: dict) -> dict:
    """Headline numbers against the issue's goals."""
    best = best_train(parts)
    cmp_ = (parts.get("compare", {}).get("result") or {}).get("result")
    dec = (parts.get("decode", {}).get("result") or {}).get("best")
    out = {"mfu": best["mfu"] if best else None,
           "mfu_setting": {k: best[k] for k in ("attention", "remat", "batch")} if best else None,
           "tokens_per_s": best["tokens_per_s"] if best else None,
           "torch_ratio": cmp_["ratio"] if cmp_ else None, "torch_ratio_batch": cmp_["batch"] if cmp_ else None,
           "decode_tokens_per_s": dec["tokens_per_s"] if dec else None,
           "decode_share_of_bound": dec["share_of_bound"] if dec else None}
    out["goals"] = {k: {"target": v, "met": None if out[k] is None else out[k] >= v} for k, v in GOALS.items()}
    return out


def fmt(x: float | None, spec: str = ".3g", scale: float = 1.0, suffix: str = "") -> str:
    """A number for the table, '-' when missing."""
    return "-" if x is None else f"{x * scale:{spec}}{suffix}"


def headline(lines: list[str]) -> str:
    """The line of a log tail that names the error (not JAX's traceback-filtering note), shortened."""
    named = [ln for ln in lines if any(w in ln for w in ("Error", "error", "Exception", "RESOURCE_EXHAUSTED"))
             and not ln.startswith("For simplicity")]
    return (named or lines or [""])[-1].strip()[:120]


def table(report: dict) -> str:
    """The short stdout table."""
    rows = [("part", "status", "wall s", "result")]
    for name, p in report["parts"].items():
        r, text = p.get("result") or {}, ""
        if name.startswith("train") and r.get("best"):
            b, n = r["best"], r["configs"]
            text = (f"best remat={b['remat']} batch={b['batch']}: {fmt(b['tokens_per_s'], '.0f')} tok/s, "
                    f"{fmt(b['model_tflops_per_s'], '.1f')} TFLOP/s, MFU {fmt(b['mfu'], '.1f', 100, '%')} "
                    f"({sum(c['status'] == 'ok' for c in n)} ok, {sum(c['status'] == 'oom' for c in n)} oom of {len(n)})")
        elif name == "compare" and r.get("result"):
            c = r["result"]
            text = (f"batch {c['batch']}: ours {fmt(c['ours_tokens_per_s'], '.0f')} vs torch "
                    f"{fmt(c['torch_tokens_per_s'], '.0f')} tok/s = {fmt(c['ratio'], '.2f')}x "
                    f"[{fmt(c['ratio_min_max'][0], '.2f')}-{fmt(c['ratio_min_max'][1], '.2f')}]")
        elif name == "decode" and r.get("best"):
            d = r["best"]
            text = (f"steps_per_call={d['steps_per_call']}: {fmt(d['tokens_per_s'], '.1f')} tok/s, "
                    f"{fmt(d['share_of_bound'], '.1f', 100, '%')} of HBM bound")
        if p["status"] != "ok":
            failed = [c["error"] for c in r.get("configs", []) + r.get("tries", []) if "error" in c]
            why = failed[-1] if failed and not text else p.get("error_tail") or [f"no result in {p['limit_s']} s"]
            text = (text + " | " if text else "") + headline(why)
        rows.append((name, p["status"], f"{p['wall_s']:.0f}", text))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join([*(r[i].ljust(widths[i]) for i in range(3)), r[3]]) for r in rows)


def orchestrate(args: argparse.Namespace) -> dict:
    """Run the parts in order under their limits; write $OUT/gpu_report.json and print the table."""
    out = Path(args.out or os.environ.get("OUT") or "gpu_out")
    out.mkdir(parents=True, exist_ok=True)
    s = sizes_for(args.tiny)
    names = args.parts.split(",") if args.parts else [n for n in PART_NAMES if not (args.tiny and n == "train_cudnn")]
    unknown = sorted(set(names) - set(PART_NAMES))
    if unknown:
        raise SystemExit(f"unknown parts {unknown}; expected some of {PART_NAMES}")
    limits = {n: (TINY_LIMIT_S if args.tiny else DEFAULT_LIMITS_S[n]) for n in names}
    for item in filter(None, (args.limits or "").split(",")):
        k, v = item.split("=")
        limits[k] = float(v)
    batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else s.batches
    remats = tuple(args.remats.split(",")) if args.remats else s.remats
    started = time.time()
    report: dict[str, Any] = {"suite": "bench/gpu_suite.py", "tiny": args.tiny, "argv": sys.argv[1:],
                              "started_unix": started, "limits_s": limits, "parts": {}}
    scratch = tempfile.mkdtemp(prefix="gpu_suite_")  # the parts' result files ($OUT keeps the report and logs)
    for name in names:
        if name.startswith("train"):
            attention = name.split("_", 1)[1]
            first = best_train(report["parts"])
            spec = {"attention": attention, "remats": remats, "batches": batches}
            if first and attention != "cudnn":  # a later attention: the winner's policy first, at most its batch
                spec.update(remats=(first["remat"], *(r for r in remats if r != first["remat"])),
                            max_batch=first["batch"])
            kind = "train"
        elif name == "compare":
            best = best_train(report["parts"])
            spec = {"attention": best["attention"] if best else "xla", "remat": best["remat"] if best else "full",
                    "batches": halvings(best["batch"]) if best else [batches[-1]]}
            kind = "compare"
        else:
            spec, kind = {}, "decode"
        print(f"[gpu_suite] {name}: limit {limits[name]:.0f} s, {json.dumps(spec)}", flush=True)
        report["parts"][name] = run_part(name, kind, spec, limits[name], out, Path(scratch), args.tiny)
        print(f"[gpu_suite] {name}: {report['parts'][name]['status']} in {report['parts'][name]['wall_s']} s",
              flush=True)
        write_json(out / "gpu_report.json", report)
    shutil.rmtree(scratch, ignore_errors=True)
    report["wall_s"] = round(time.time() - started, 1)
    report["summary"] = summary(report["parts"])
    write_json(out / "gpu_report.json", report)
    print(table(report))
    print(json.dumps({"summary": report["summary"]}, indent=1, default=str))
    print(f"[gpu_suite] report: {out / 'gpu_report.json'}")
    return report


def main() -> None:
    """Orchestrate the suite, or (--part) run one part inside its subprocess."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU, attention=xla only (CI dry run)")
    p.add_argument("--out", help="report folder (default: $OUT, else ./gpu_out)")
    p.add_argument("--parts", help=f"comma list of {','.join(PART_NAMES)} (default: all)")
    p.add_argument("--limits", help="per-part seconds, e.g. train_cudnn=200,decode=60")
    p.add_argument("--batches", help="train batch candidates, large to small (default 16,8,4,2)")
    p.add_argument("--remats", help="remat policies to sweep (default none,dots,full)")
    p.add_argument("--part", choices=sorted(PART_FUNCS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        sys.exit(PART_FUNCS[args.part](json.loads(args.spec), args.result))
    report = orchestrate(args)
    sys.exit(0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1)


if __name__ == "__main__":
    main()
