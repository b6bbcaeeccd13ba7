"""The programs the AOT tool compiles, through one harness: the stage's training step (train.harness, the step
main.py runs) and the inference engine's own prefill and decode (infer.generate's jitted functions with the
params, batch and KV-cache shardings of infer.Engine), each lowered on ShapeDtypeStruct inputs and compiled."""

from __future__ import annotations

import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from xllava_jax.aot.chips import BadConfig, Topology, one_host, parse_topology, tpu_devices
from xllava_jax.aot.cost import cost_of, layer_cost, summarize
from xllava_jax.aot.sizing import abstract_batch, leaf_bytes, matmul_params, program_bytes
from xllava_jax.infer.generate import decode, prefill, text_config
from xllava_jax.infer.sampling import SamplingConfig
from xllava_jax.models.layers import resolve_attention
from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import abstract_params, build_model, param_logical_axes
from xllava_jax.sharding import Rules, make_mesh, spec_for, tree_shardings
from xllava_jax.train.harness import stage_harness
from xllava_jax.train.initialize import UnknownArchitecture, resolve_model_config
from xllava_jax.train.metrics import step_flops
from xllava_jax.train.validate import ConfigError, trainable_groups, validate

WHAT = ("train", "generate")


def compile_step(config: Any, cfg: Any, mesh: Any) -> tuple[Any, Any, dict, float]:
    """(compiled step, abstract state, abstract batch, compile seconds) of the stage's train step."""
    h = stage_harness(config, cfg, 1000, mesh)
    state = h.abstract_state()
    batch = abstract_batch(config, cfg, mesh)
    start = time.perf_counter()
    compiled = h.jit_step(batch).lower(state, batch).compile()
    return compiled, state, batch, time.perf_counter() - start


def compile_train(config: Any, cfg: Any, devices: list, cost_devices: list | None = None) -> dict:
    """Compile the stage's train step on `devices`; the report (bytes per device, flops, timings).

    Memory is the compiled step's own. FLOPs come from layer_cost on `cost_devices` (a single-host slice of
    the same chip), spread evenly over `devices`: on multi-host v5p slices the TPU compiler's count of the
    sharded step itself is short (0.67x the analytic count on v5p-64 for a plain decoder, exact on 4 chips;
    bench/SCALE.md). Without `cost_devices`, the scanned step's own (under)count."""
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    compiled, state, batch, seconds = compile_step(config, cfg, mesh)
    cost = cost_of(compiled)
    kernels = compiled.as_text().count("tpu_custom_call")
    flops, optimal = float(cost.get("flops", 0.0)), float(cost.get("optimal_seconds", -1.0))
    cost_s = 0.0
    if cost_devices:
        total_flops, cost_s = layer_cost(config, cfg, cost_devices, compile_step)
        flops = total_flops / len(devices)
    params, opt = leaf_bytes((state.params, state.frozen)), leaf_bytes(state.opt_state)
    grads = leaf_bytes(state.params) * (2 if config.train.grad_accum > 1 else 1)
    temps, total = program_bytes(compiled)
    b, t = config.train.batch_size, config.data.max_len
    images = b * config.data.max_images_per_row if "pixel_values" in batch else 0
    return {"bytes_per_device": {"params": params, "optimizer": opt, "gradients": grads,
                                 "temporaries": temps, "total": total},
            "flops": flops, "flops_exact": bool(cost_devices), "optimal_seconds": optimal, "cost_compile_s": cost_s,
            "model_flops": step_flops(cfg, trainable_groups(config), b * t, t, images), "tokens": b * t,
            "compile_s": seconds, "mosaic_kernels": kernels}


def engine_params(cfg: Any, mesh: Any, rules: Rules) -> Any:
    """Abstract params placed as infer.Engine places them (infer.generate.place_params)."""
    shardings = tree_shardings(param_logical_axes(cfg), abstract_params(cfg), mesh, rules)
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_params(cfg), shardings)


def engine_batch(cfg: Any, mesh: Any, rules: Rules, batch: int, prompt_len: int) -> tuple:
    """Abstract (input_ids, mask, positions, pixel_values) of a collated prompt batch (infer.batching.collate, one
    image per prompt), placed as infer.Engine.device_batch places them."""
    def rows(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        spec = spec_for(PartitionSpec("activation_batch"), shape, mesh, rules)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
    tokens = [rows((batch, prompt_len), jnp.int32) for _ in range(3)]
    v = cfg.vision if isinstance(cfg, LlavaConfig) else None
    pixels = rows((batch, v.image_size, v.image_size, v.num_channels), jnp.float32) if v else None
    return (*tokens, pixels)


def lower_generate(cfg: Any, mesh: Any, rules: Rules, batch: int, prompt_len: int, max_new_tokens: int,
                   sampling: SamplingConfig = SamplingConfig()) -> tuple[Any, Any]:
    """(lowered prefill, lowered decode): infer.generate's own programs as infer.Engine calls them on `mesh`
    (a `batch` x `prompt_len` prompt batch, `max_new_tokens` cache slots after it, one EOS id)."""
    model = build_model(cfg)
    params = engine_params(cfg, mesh, rules)
    eos = jax.ShapeDtypeStruct((1,), jnp.int32)  # made before the engine enters its mesh: uncommitted
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))  # made inside it
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        first = prefill.lower(model, params, *engine_batch(cfg, mesh, rules, batch, prompt_len), eos,
                              jax.eval_shape(lambda: jax.random.PRNGKey(0)), step,
                              max_new_tokens=max_new_tokens, sampling=sampling, mesh=mesh, rules=tuple(rules))
        shapes = first.out_info
        shardings = first.compile().output_shardings
        state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                       shapes, shardings)
        rest = decode.lower(model, params, state, eos, step, sampling=sampling)
    return first, rest


def compile_generate(config: Any, cfg: Any, devices: list, batch: int, prompt_len: int, max_len: int) -> dict:
    """Compile the engine's prefill (prompt_len tokens into a max_len cache) and decode programs."""
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    rules = tuple(tuple(r) for r in config.logical_axis_rules)
    if max_len <= prompt_len:
        raise BadConfig(f"--gen_max_len={max_len} leaves no room after --gen_prompt_len={prompt_len}")
    out = {"bytes_per_device": {"params": leaf_bytes(engine_params(cfg, mesh, rules)), "optimizer": 0,
                                "gradients": 0, "temporaries": 0, "total": 0},
           "flops": 0.0, "optimal_seconds": 0.0, "model_flops": 0.0, "tokens": 0, "compile_s": 0.0}
    start = time.perf_counter()
    programs = lower_generate(cfg, mesh, rules, batch, prompt_len, max_len - prompt_len)
    for name, lowered in zip(("prefill", "decode"), programs):
        compiled = lowered.compile()
        temps, total = program_bytes(compiled)
        b = out["bytes_per_device"]
        b["temporaries"], b["total"] = max(b["temporaries"], temps), max(b["total"], total)
        cost = cost_of(compiled)
        out["flops"] += float(cost.get("flops", 0.0))
        out["optimal_seconds"] += max(float(cost.get("optimal_seconds", 0.0)), 0.0)
        out[f"{name}_s"] = max(float(cost.get("optimal_seconds", 0.0)), 0.0)
    out["compile_s"] = time.perf_counter() - start
    out["model_flops"] = 2.0 * batch * (prompt_len + 1) * matmul_params(text_config(cfg))
    out["tokens"] = batch * (prompt_len + 1)
    return out


def run(config: Any, topology: str, what: str = "train", gen: Sequence[int] = (8, 1024, 2048), hbm: float = 0.0,
        exact_cost: bool = True) -> tuple[dict, str]:
    """Compile `what` of `config` for `topology`; (summary, attention used). BadConfig for bad settings."""
    topo: Topology = parse_topology(topology)
    if what not in WHAT:
        raise BadConfig(f"--what={what!r}; expected one of {WHAT}")
    devices = tpu_devices(topo)
    config.model.attention = resolve_attention(config.model.attention, "tpu")
    hosts = max(d.process_index for d in devices) + 1
    check = config.copy_and_resolve_references()
    check.init.source = "random"  # no weights are read: the init paths need not exist here
    try:
        validate(check, num_devices=len(devices), num_processes=hosts)
        cfg = resolve_model_config(config)
    except (ConfigError, UnknownArchitecture) as e:
        raise BadConfig(str(e)) from e
    try:
        cfg.validate() if hasattr(cfg, "validate") else None
    except ValueError as e:
        raise BadConfig(str(e)) from e
    cost_devices = tpu_devices(one_host(topo)) if exact_cost and what == "train" else None
    report = (compile_train(config, cfg, devices, cost_devices) if what == "train"
              else compile_generate(config, cfg, devices, *gen))
    return summarize(report, topo, len(devices), hbm), config.model.attention
