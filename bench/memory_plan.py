"""Memory and sharding plan (a script, not a test) for X-LLaVA 13B stage 2 under configs/xllava_13b_stage2.py.

Model: LLaMA-2-13B decoder (40 layers, hidden 5120, MLP 13824, 40 heads, MHA) with the vocabulary expanded to
39,478 pieces (+ <image>, <pad>) padded to a multiple of 64 = 39,488; CLIP ViT-L/14-336 (frozen); mlp2x_gelu
projector 1024 -> 5120 -> 5120. Shipped execution settings (xllava_jax/train/defaults.py llava15_recipe):
bf16 compute, fp32 params (so fp32 AdamW moments and gradients), remat "full", scanned layers, attention auto
(splash on TPU, cudnn on GPU: no [n,T,T] scores kept; --attention xla for XLA's), mesh data=1 x fsdp=all
devices x tensor=1, DEFAULT_RULES, global batch 128, grad_accum 1. The TPU compiler's own
figures (python -m xllava_jax.aot, bench/SCALE.md) replace this plan where a TPU target is concerned.

1. Static memory per device, from jax.eval_shape only (nothing allocated): the project's own stage_harness /
   abstract_state on an AbstractMesh of N devices gives every leaf of the train state its NamedSharding from
   the logical-axis rules; bytes per device = sum over leaves of prod(shard_shape) * itemsize.
     params     = trainable (projector, language_model) + frozen (vision_tower)
     opt state  = AdamW mu + nu of the trainable groups (+ counters)
     gradients  = one fp32 gradient of the trainable groups, sharded like the params
                  (+ the accumulator, a second copy, when grad_accum > 1: step.py scans microbatches)
2. Activations per device (b = micro-batch rows per device, T = seq, H = hidden, I = MLP, n = heads,
   L = decoder layers, V = vocab, P_l = params of one decoder layer, P_h = V*H = one of embed/lm_head):
     saved    = L * b * T * H * 2                      scan carry (layer input) kept per layer, bf16
     layer    = b * (C_H*T*H*2 + C_S*n*T^2)            one layer recomputed + its backward: C_H bf16 [T,H]
                                                       tensors (q,k,v, roped q,k, attn out, norms, residuals,
                                                       their cotangents; the MLP [T,I] tensors, 3*I/H ~ 8 of
                                                       them, are dead by the attention backward) and C_S bytes
                                                       per attention score (fp32 logits/probs, bf16 probs,
                                                       bf16 dprobs, fp32 dlogits: XLA attention materialises
                                                       [n,T,T]; 0 with a flash kernel)
     fsdp     = P_l * (4 + 2 + 4)                      one layer's all-gathered fp32 weights, their bf16 copy and
                                                       the unsharded fp32 weight gradient before reduce-scatter
     logits   = b * T * V * (4 + 4 + 2)                fp32 logits, fp32 dlogits, bf16 lm_head output
     head     = P_h * (4 + 2 + 4)                      all-gathered lm_head (fp32 + bf16) and its full fp32 grad
     vision   = b * (frozen CLIP forward of one image, no backward): small
   total activations = saved + layer + fsdp + logits + head + vision (conservative: the phases are added).
3. XLA check: on simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count, set before jax is
   imported) the project's real train step of a scaled-down config (default: 4 decoder layers of 13B width,
   CLIP-L with 2 layers, seq 2048, micro-batch 1 per device, 8 devices) is lowered and compiled (never run),
   and compiled.memory_analysis() per device is printed next to the analytic prediction for the same config;
   two more compiles (twice the decoder layers; one more row per device) isolate the per-layer and the
   per-row terms through their temp-bytes increments. Each compile takes ~10 s and < 1 GB RAM at 13B width.
   Note XLA:CPU is not XLA:GPU/TPU: its buffer assignment differs, and it computes bf16 dots in fp32.
4. A markdown table per hardware: params / optimizer state / gradients / activations / total per device,
   HBM capacity, headroom, and the largest per-device micro-batch that fits (with the grad_accum it needs).

    python bench/memory_plan.py                 # plan + XLA check (a few minutes on 2 CPU cores)
    python bench/memory_plan.py --no_compile    # analytic plan only (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "xllava_13b_stage2.py"))
    p.add_argument("--vocab", type=int, default=39478 + 2, help="tokenizer size (pieces + <image> + <pad>)")
    p.add_argument("--seq", type=int, default=0, help="sequence length (0: config data.max_len)")
    p.add_argument("--attention", default="", help="override model.attention (xla | cudnn) for the plan")
    p.add_argument("--reserve", type=float, default=0.10,
                   help="share of HBM kept free for the runtime, fragmentation, collective buffers")
    p.add_argument("--no_compile", action="store_true", help="skip the XLA compile check")
    p.add_argument("--check_devices", type=int, default=8)
    p.add_argument("--check_layers", type=int, default=4)
    p.add_argument("--check_vision_layers", type=int, default=2)
    p.add_argument("--check_hidden", type=int, default=5120, help="decoder width of the check (13B: 5120)")
    p.add_argument("--check_mlp", type=int, default=13824)
    p.add_argument("--check_heads", type=int, default=40)
    p.add_argument("--check_micro_batch", type=int, default=1)
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:  # before jax is imported: CPU, with simulated devices for the compile check
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={ARGS.check_devices}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AbstractMesh  # noqa: E402

sys.path.insert(0, ROOT)
from xllava_jax.models.llava import LlavaConfig  # noqa: E402
from xllava_jax.models.params import abstract_params  # noqa: E402
from xllava_jax.models.vocab import padded_size  # noqa: E402
from xllava_jax.train import trainable  # noqa: E402
from xllava_jax.train.harness import stage_harness  # noqa: E402
from xllava_jax.models.presets import CLIP_L14_336, LLAMA2_13B  # noqa: E402
from xllava_jax.train.initialize import model_config as resolve  # noqa: E402
from xllava_jax.sharding import MESH_AXES, make_mesh  # noqa: E402
from xllava_jax.train.validate import trainable_groups  # noqa: E402

GiB = 2 ** 30
# HBM per device. H100 SXM 80GB: nvidia-smi reports 81,559 MiB. TPU v5p: 95 GB HBM2e per chip (Cloud TPU docs);
# taken as 95e9 bytes (the smaller reading); v5p-64 = 2x4x4 = 64 TensorCores = 32 chips, one JAX device per chip.
HARDWARE = (("8x H100-80GB", 8, 81559 * 2 ** 20, "gpu"), ("TPU v5p-64 (32 chips)", 32, 95e9, "tpu"))
C_H = 12  # bf16 [T, H] tensors alive at a layer's backward peak (see the module doc)
C_S = 12  # bytes per attention score element with XLA attention (fp32 probs 4 + bf16 probs 2 + dprobs 2 + dlogits 4)


def load_config(path: str):
    """The ml_collections config of a configs/*.py file."""
    spec = importlib.util.spec_from_file_location("plan_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def model_config(config, vocab: int, text_layers: int | None = None, vision_layers: int | None = None,
                 hidden: int | None = None, mlp: int | None = None, heads: int | None = None,
                 attention: str = "") -> LlavaConfig:
    """X-LLaVA 13B (or a scaled copy) with the config's execution settings (as initial_model applies them)."""
    if attention:
        config = config.copy_and_resolve_references()
        config.model.attention = attention
    text = {**LLAMA2_13B, "vocab_size": padded_size(vocab, config.init.pad_vocab_to)}
    for k, v in (("num_hidden_layers", text_layers), ("hidden_size", hidden), ("intermediate_size", mlp),
                 ("num_attention_heads", heads), ("num_key_value_heads", heads)):
        if v:
            text[k] = v
    vision = dict(CLIP_L14_336)
    if vision_layers:
        vision["num_hidden_layers"] = vision_layers
    return resolve(config, text, vision, types.SimpleNamespace(vocab_size=vocab, image_token_id=vocab - 2,
                                                               pad_id=vocab - 1))


def mesh_sizes(config, n: int) -> tuple[int, ...]:
    """(data, fsdp, tensor) of config.mesh on n devices."""
    sizes = [config.mesh[a] for a in MESH_AXES]
    if -1 in sizes:
        sizes[sizes.index(-1)] = n // math.prod(s for s in sizes if s != -1)
    return tuple(sizes)


def device_bytes(tree) -> int:
    """Bytes per device of a tree of sharded ShapeDtypeStructs: prod(shard shape) * itemsize per leaf."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree_util.tree_leaves(tree))


def global_bytes(tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def state_plan(cfg: LlavaConfig, config, mesh, grad_accum: int = 1) -> dict:
    """Per-device bytes of params / optimizer state / gradients on `mesh` (a Mesh or an AbstractMesh)."""
    config = config.copy_and_resolve_references()
    config.train.grad_accum = grad_accum
    h = stage_harness(config, cfg, 1000, mesh)
    st = h.abstract_state()
    out = {"trainable": device_bytes(st.params), "frozen": device_bytes(st.frozen),
           "opt": device_bytes(st.opt_state), "scalars": device_bytes((st.step, st.nonfinite_streak,
                                                                        st.nonfinite_total)),
           "trainable_global": global_bytes(st.params), "frozen_global": global_bytes(st.frozen),
           "groups": h.groups, "harness": h, "state": st,
           "frozen_dtype": config.model.frozen_dtype or config.model.param_dtype}
    out["params"] = out["trainable"] + out["frozen"]
    out["grads"] = out["trainable"] * (2 if grad_accum > 1 else 1)  # + the scan accumulator
    replicated = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(st.params)
                  if x.sharding.shard_shape(x.shape) == x.shape and math.prod(x.shape) > 2 ** 20]
    out["replicated_large"] = replicated
    return out


@functools.lru_cache(maxsize=None)
def decoder_param_counts(cfg: LlavaConfig) -> tuple[int, int]:
    """(params of one decoder layer, params of the embedding table) from the abstract params."""
    p = abstract_params(cfg)["language_model"]
    layer = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(p["layers"])) // cfg.text.num_hidden_layers
    return layer, math.prod(p["embed_tokens"]["embedding"].shape)


def activation_plan(cfg: LlavaConfig, micro_batch: int, seq: int) -> dict:
    """Per-device activation bytes of the remat-'full' train step (formula in the module doc)."""
    t, v = cfg.text, cfg.vision
    b, T, H, L, V, n = micro_batch, seq, t.hidden_size, t.num_hidden_layers, t.vocab_size, t.num_attention_heads
    xla = dataclasses.replace(t, attention="xla")  # param shapes do not depend on the kernel (cuDNN needs a GPU)
    layer_params, head_params = decoder_param_counts(dataclasses.replace(cfg, text=xla))
    c_s = C_S if t.attention == "xla" else 0
    nv = v.num_patches + 1
    vision_row = (6 * nv * v.hidden_size + 2 * nv * v.intermediate_size) * 2 + \
        v.num_attention_heads * nv * nv * 6 + 2 * v.num_patches * H * 2  # one CLIP layer fwd + projector out
    terms = {
        "saved": L * b * T * H * 2,
        "layer": b * (C_H * T * H * 2 + c_s * n * T * T),
        "fsdp": layer_params * (4 + 2 + 4),
        "logits": b * T * V * (4 + 4 + 2),
        "head": head_params * (4 + 2 + 4),
        "vision": b * vision_row,
    }
    terms["total"] = sum(terms.values())
    return terms


def gib(x: float) -> str:
    return f"{x / GiB:.1f} GiB"


def plan_for(config, cfg: LlavaConfig, n: int, capacity: float, seq: int, reserve: float, platform: str) -> dict:
    """Static + activation bytes on n devices at the shipped batch, and the largest micro-batch that fits."""
    mesh = AbstractMesh(mesh_sizes(config, n), MESH_AXES)
    rows = config.train.batch_size // n  # rows per device per optimizer step
    shipped_mb = rows // config.train.grad_accum
    budget = capacity * (1 - reserve)

    def total(mb):
        accum = rows // mb
        s = state_plan(cfg, config, mesh, accum)
        a = activation_plan(cfg, mb, seq)
        return s, a, s["params"] + s["opt"] + s["grads"] + a["total"], accum

    s, a, tot, accum = total(shipped_mb)
    fit = None
    for mb in sorted((d for d in range(1, rows + 1) if rows % d == 0), reverse=True):
        fs, fa, ft, facc = total(mb)
        if ft <= budget:
            fit = dict(mb=mb, accum=facc, state=fs, act=fa, total=ft)
            break
    static = s["params"] + s["opt"] + s["trainable"]  # grad_accum 1: one gradient copy
    mem_max = max((mb for mb in range(1, 257) if static + activation_plan(cfg, mb, seq)["total"] <= budget), default=0)
    flash = None
    if platform == "gpu" and cfg.text.attention == "xla":  # model.attention=cudnn: no [n, T, T] scores kept
        fcfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, attention="cudnn"))
        flash = s["params"] + s["opt"] + s["grads"] + activation_plan(fcfg, shipped_mb, seq)["total"]
    return dict(n=n, capacity=capacity, budget=budget, mb=shipped_mb, accum=accum, state=s, act=a, total=tot,
                fit=fit, mem_max=mem_max, flash=flash)


def markdown(plans: list[tuple[str, dict]], reserve: float) -> str:
    """The plan table."""
    head = "| per device | " + " | ".join(name for name, _ in plans) + " |"
    lines = [head, "|---|" + "---|" * len(plans)]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(p) for _, p in plans) + " |")

    row("devices (mesh data x fsdp x tensor)", lambda p: f"{p['n']} (1 x {p['n']} x 1)")
    row("shipped micro-batch / device (global 128, accum 1)", lambda p: f"{p['mb']} rows x 2048")
    row(f"params (trainable fp32 + frozen {plans[0][1]['state']['frozen_dtype']})", lambda p: f"{gib(p['state']['params'])} "
        f"({gib(p['state']['trainable'])} + {gib(p['state']['frozen'])})")
    row("optimizer state (AdamW mu+nu, trainable)", lambda p: gib(p["state"]["opt"]))
    row("gradients (fp32, trainable)", lambda p: gib(p["state"]["grads"]))
    row("activations (remat full, shipped micro-batch)", lambda p: gib(p["act"]["total"]))
    row("**total**", lambda p: f"**{gib(p['total'])}**")
    row("HBM capacity", lambda p: gib(p["capacity"]))
    row("headroom (capacity - total)", lambda p: gib(p["capacity"] - p["total"]))
    row(f"largest micro-batch / device within {100 * (1 - reserve):.0f}% of HBM",
        lambda p: f"{p['fit']['mb']} (grad_accum {p['fit']['accum']})" if p["fit"] else "none")
    row("activations at that micro-batch", lambda p: gib(p["fit"]["act"]["total"]) if p["fit"] else "-")
    row("gradients at that micro-batch (+ accumulator)", lambda p: gib(p["fit"]["state"]["grads"]) if p["fit"] else "-")
    row("total at that micro-batch", lambda p: gib(p["fit"]["total"]) if p["fit"] else "-")
    row("headroom at that micro-batch", lambda p: gib(p["capacity"] - p["fit"]["total"]) if p["fit"] else "-")
    row("largest micro-batch by memory alone (accum 1)", lambda p: str(p["mem_max"]))
    row("total at the shipped micro-batch with model.attention=cudnn",
        lambda p: f"{gib(p['flash'])} (headroom {gib(p['capacity'] - p['flash'])})" if p["flash"] else "n/a (no cuDNN)")
    return "\n".join(lines)


def batch_like(cfg: LlavaConfig, rows: int, seq: int) -> dict:
    """Abstract train batch (the step's layout: one image slot per row)."""
    i32 = lambda: jax.ShapeDtypeStruct((rows, seq), jnp.int32)  # noqa: E731
    s = cfg.vision.image_size
    return {"input_ids": i32(), "labels": i32(), "attention_mask": i32(), "positions": i32(), "segment_ids": i32(),
            "pixel_values": jax.ShapeDtypeStruct((rows, 1, s, s, 3), jnp.float32)}


def compile_check(config, args, seq: int, layers: int, micro_batch: int) -> dict:
    """Compile (never run) the real train step of a scaled config on simulated CPU devices; XLA vs analytic."""
    n = args.check_devices
    if jax.device_count() < n:
        raise RuntimeError(f"need {n} simulated devices, have {jax.device_count()} (XLA_FLAGS set too late?)")
    cfg = model_config(config, args.vocab, layers, args.check_vision_layers, args.check_hidden,
                       args.check_mlp, args.check_heads, args.attention)
    mesh = make_mesh(*mesh_sizes(config, n), devices=jax.devices()[:n])
    s = state_plan(cfg, config, mesh, 1)
    a = activation_plan(cfg, micro_batch, seq)
    batch = batch_like(cfg, n * micro_batch, seq)
    t0 = time.perf_counter()
    compiled = s["harness"].jit_step(batch).lower(s["state"], batch).compile()
    mem = compiled.memory_analysis()
    batch_dev = sum(math.prod(x.shape) * x.dtype.itemsize for x in batch.values()) // n
    return dict(cfg=cfg, n=n, compile_s=time.perf_counter() - t0, state=s, act=a,
                pred_argument=s["params"] + s["opt"] + s["scalars"] + batch_dev,
                pred_output=s["params"] + s["opt"] + s["scalars"], pred_temp=s["grads"] + a["total"],
                argument=mem.argument_size_in_bytes, output=mem.output_size_in_bytes, temp=mem.temp_size_in_bytes,
                alias=mem.alias_size_in_bytes)


def report_check(config, args, seq: int) -> None:
    """The base scaled config, plus one with twice the layers and one with one more row per device:
    the temp-bytes increments test the per-layer and the per-row terms of the activation model separately."""
    L, b = args.check_layers, args.check_micro_batch
    runs = {}
    for key, layers, mb in (("base", L, b), ("layers", 2 * L, b), ("row", L, b + 1)):
        runs[key] = r = compile_check(config, args, seq, layers, mb)
        c = r["cfg"]
        print(f"  compiled decoder L={c.text.num_hidden_layers} H={c.text.hidden_size} I={c.text.intermediate_size} "
              f"heads={c.text.num_attention_heads} vocab={c.text.vocab_size}, CLIP L={c.vision.num_hidden_layers}, "
              f"seq {seq}, micro-batch {mb}/device x {r['n']} devices in {r['compile_s']:.0f} s: argument "
              f"{gib(r['argument'])}, output {gib(r['output'])}, temp {gib(r['temp'])}, alias {gib(r['alias'])}",
              flush=True)
    r = runs["base"]
    print("  analytic activation terms (base): " + ", ".join(f"{k} {x / GiB:.3f}" for k, x in r["act"].items())
          + f" GiB; grads {r['state']['grads'] / GiB:.3f} GiB\n")
    print(f"| per device, scaled config (L={L}, micro-batch {b}) | analytic | XLA memory_analysis | XLA / analytic |\n"
          "|---|---|---|---|")
    rows = [("argument (params + opt state + batch)", r["pred_argument"], r["argument"]),
            ("output (new state + metrics; aliased to args)", r["pred_output"], r["output"]),
            ("temp (grads + activations)", r["pred_temp"], r["temp"]),
            ("peak (argument + temp + unaliased output)", r["pred_argument"] + r["pred_temp"],
             r["argument"] + r["temp"] + r["output"] - r["alias"]),
            (f"temp increment, +{L} decoder layers (saved inputs + grads)",
             runs["layers"]["pred_temp"] - r["pred_temp"], runs["layers"]["temp"] - r["temp"]),
            ("temp increment, +1 row per device (saved + layer + logits + vision)",
             runs["row"]["pred_temp"] - r["pred_temp"], runs["row"]["temp"] - r["temp"])]
    for label, pred, got in rows:
        print(f"| {label} | {pred / GiB:.3f} GiB | {got / GiB:.3f} GiB | {got / pred:.2f} |")


def main() -> None:
    args = ARGS
    config = load_config(args.config)
    seq = args.seq or config.data.max_len
    cfg = model_config(config, args.vocab, attention=args.attention)
    t, v = cfg.text, cfg.vision
    print(f"config {os.path.relpath(args.config, ROOT)}: stage {config.stage}, trainable {trainable_groups(config)}, "
          f"global batch {config.train.batch_size}, grad_accum {config.train.grad_accum}, mesh "
          f"{dict(config.mesh)}, dtype {t.dtype}, param_dtype {t.param_dtype}, remat {t.remat_policy}, "
          f"attention {t.attention}, scan {t.scan_layers}, seq {seq}")
    print(f"model: LLaMA-2-13B L={t.num_hidden_layers} H={t.hidden_size} I={t.intermediate_size} "
          f"heads={t.num_attention_heads} vocab={t.vocab_size}; CLIP L={v.num_hidden_layers} D={v.hidden_size} "
          f"{v.image_size}px/{v.patch_size}; projector {cfg.projector_type}")
    plans = []
    for name, n, cap, platform in HARDWARE:
        p = plan_for(config, cfg, n, cap, seq, args.reserve, platform)
        plans.append((name, p))
        s = p["state"]
        print(f"\n{name}: {n} devices, mesh {mesh_sizes(config, n)}; params {s['trainable_global'] / 1e9 / 4:.3f}B "
              f"trainable + {trainable.count(s['state'].frozen) / 1e9:.3f}B frozen ({s['frozen_dtype']}); "
              f"large replicated trainable leaves: {s['replicated_large'] or 'none'}")
        print("  activation terms at the shipped micro-batch "
              f"{p['mb']}: " + ", ".join(f"{k} {gib(x)}" for k, x in p["act"].items()))
    print("\n" + markdown(plans, args.reserve) + "\n")

    if args.no_compile:
        print("XLA check skipped (--no_compile)")
        return
    print(f"XLA check: compiling the stage-2 train step of scaled configs on {args.check_devices} simulated "
          f"CPU devices (XLA:CPU computes bf16 dots in fp32) ...", flush=True)
    report_check(config, args, seq)


if __name__ == "__main__":
    main()
