"""FLOP counts of the training step and what they bound: step time, MFU and tokens/s on a chip."""

from __future__ import annotations

from typing import Any, Callable

from xllava_jax.aot.chips import Topology
from xllava_jax.aot.sizing import with_layers
from xllava_jax.models.llava import LlavaConfig
from xllava_jax.sharding import make_mesh


def cost_of(compiled: Any) -> dict:
    """The compiler's cost_analysis of a compiled program ({} when it gives none)."""
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


def layer_cost(config: Any, cfg: Any, devices: list, compile_step: Callable) -> tuple[float, float]:
    """(FLOPs of one full step summed over all devices, compile seconds), from unrolled 1-2 layer compiles on
    `devices` (a single-host slice: see compile.compile_train) by `compile_step(config, cfg, mesh)`.

    XLA's cost analysis counts a while loop's body once, so the scanned step (layers, grad_accum microbatches)
    is undercounted. Cost is linear in the layer counts: F(a, b) = c + a * t + b * v for a decoder and b CLIP
    layers, so F(1, 2), F(2, 2) and F(1, 3) give F(L, Lv) (one microbatch, times grad_accum). The cost compiles
    use XLA attention (a Pallas kernel reports no FLOPs: for splash this counts the masked blocks it skips) and
    plain FSDP over `devices`, the microbatch rounded up to a multiple of their number and the count scaled back.
    """
    accum, n = config.train.grad_accum, len(devices)
    rows = config.train.batch_size // accum
    padded = -(-rows // n) * n
    micro = config.copy_and_resolve_references()
    micro.train.update(batch_size=padded, grad_accum=1)
    micro.model.attention = "xla"
    micro.mesh.update(data=1, fsdp=-1, tensor=1)
    mesh = make_mesh(1, -1, 1, devices=devices)
    llava = isinstance(cfg, LlavaConfig)
    text_layers = (cfg.text if llava else cfg).num_hidden_layers
    points = [(1, 2), (2, 2)] + ([(1, 3)] if llava else [])
    costs, seconds = [], 0.0
    for a, b in points:
        compiled, _, _, s = compile_step(micro, with_layers(cfg, a, b), mesh)
        costs.append(float(cost_of(compiled).get("flops", 0.0)) * n)
        seconds += s
    total = costs[0] + (text_layers - 1) * (costs[1] - costs[0])
    if llava:
        total += (cfg.vision.num_hidden_layers - 2) * (costs[2] - costs[0])
    return total * accum * rows / padded, seconds


def summarize(report: dict, topo: Topology, num_devices: int, hbm: float = 0.0) -> dict:
    """The JSON record: report + HBM (`hbm` bytes, default the chip's), fits, estimated step time and MFU."""
    chip = topo.chip
    hbm = hbm or chip.hbm
    per_device = report["flops"]
    est = mfu = tokens_per_s = None  # only from a whole FLOP count (a loop body counted once gives nonsense)
    if report.get("flops_exact"):
        est = max(report["optimal_seconds"], per_device / chip.peak)
        mfu = report["model_flops"] / (est * chip.peak * num_devices) if est > 0 else 0.0
        tokens_per_s = report["tokens"] / est if est > 0 else 0.0
    return {"topology": topo.accelerator_type, "grid": topo.name, "num_devices": num_devices, "hbm_bytes": hbm,
            "bytes_per_device": report["bytes_per_device"], "fits": report["bytes_per_device"]["total"] <= hbm,
            "flops": per_device, "model_flops_per_device": report["model_flops"] / num_devices,
            "est_step_s": est, "est_mfu": mfu,
            "tokens_per_s": tokens_per_s, "compile_s": report["compile_s"],
            **{k: report[k] for k in ("prefill_s", "decode_s", "mosaic_kernels", "cost_compile_s") if k in report}}
