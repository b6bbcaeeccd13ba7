"""Ahead-of-time compile of a config's training step (or generation programs) for a Cloud TPU topology,
on a machine without a TPU (libtpu's compiler; `pip install -e .[tpu]`).

  python -m xllava_jax.aot --config configs/llava15_13b.py:stage2 --topology v5p-64 [--config.a.b=v ...]
      [--json OUT] [--what train|generate] [--gen_batch 8 --gen_prompt_len 1024 --gen_max_len 2048]

The config's mesh is built on the topology's devices; the exact jitted step of the stage (make_harness:
shardings, donation, remat, grad_accum) is lowered on ShapeDtypeStruct inputs (nothing is allocated) and
compiled. Printed per device: parameter, optimizer-state, gradient and temporary bytes (compiler's
memory_analysis; params/optimizer/gradients from the state's shardings), the chip's HBM and whether the total
fits, the compiler's FLOP count (cost_analysis of unrolled 1-2 layer compiles on a 4-chip slice of the same
chip, extrapolated: layer_cost) and the step time it bounds (max of FLOPs / peak and the compiler's roofline
`optimal_seconds`), and the MFU and tokens/s they imply: a lower bound on step time, an upper bound on MFU.
Exit 0 fits, 1 does not, 2 bad config, 3 the compile failed. docs/multihost.md has the details.

Topologies: Cloud TPU names (v4-N and v5p-N count TensorCores, 2 per chip; v5litepod-N / v5e-N and v6e-N
count chips) or an explicit chip grid `v5p:2x4x4`, `v5e:2x2`. The model's architecture comes from the
weights the config names when they exist on disk (HF config.json or a checkpoint's model config), else
from the published sizes of the named model (KNOWN_LLMS), else from config.model (init.source random).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any, Sequence

import numpy as np

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation as libtpu and Cloud TPU name it."""

    topo: str  # libtpu topology prefix (get_topology_desc)
    accel: str  # TPU_ACCELERATOR_TYPE prefix (Cloud TPU name)
    cores_per_chip: int  # what the Cloud TPU name counts per chip
    dims: int  # 2D or 3D chip grid
    hbm: float  # bytes of HBM per chip (one JAX device)
    peak: float  # bf16 FLOP/s per chip


# Public Cloud TPU figures. v5p HBM: 95 GB per chip (taken as 95e9, as bench/memory_plan.py does).
CHIPS = {
    "v4": Chip("v4", "v4", 2, 3, 32 * GiB, 275e12),
    "v5p": Chip("v5p", "v5p", 2, 3, 95e9, 459e12),
    "v5e": Chip("v5e", "v5litepod", 1, 2, 16 * GiB, 197e12),
    "v6e": Chip("v6e", "v6e", 1, 2, 32 * GiB, 918e12),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e", "v6lite": "v6e"}
TOPOLOGY_HELP = ("a Cloud TPU name (v4-64, v5p-64, v5litepod-256, v5e-16, v6e-64: v4/v5p count TensorCores, "
                 "v5e/v6e chips) or a chip grid (v5p:2x4x4, v4:2x2x2, v5e:2x2, v6e:8x8); generations: "
                 + ", ".join(sorted(CHIPS)))

# Published sizes of the models the shipped configs name (HF config.json values), keyed by directory basename.
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000)
LLAMA2_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                  num_key_value_heads=40, vocab_size=32000)
KNOWN_LLMS = {"vicuna-7b-v1.5": LLAMA2_7B, "llama-2-7b-hf": LLAMA2_7B, "vicuna-13b-v1.5": LLAMA2_13B,
              "llama-2-13b-hf": LLAMA2_13B,
              # the X-LLaVA vocabulary-expanded tokenizer (docs/tokenizer.md) on LLaMA-2-13B
              "xllava_tokenizer": {**LLAMA2_13B, "vocab_size": 39478}}
ADDED_TOKENS = 2  # <image> and <pad>, appended to an HF tokenizer by tokenizer/spm.py


class BadConfig(ValueError):
    """A setting the AOT tool cannot compile (exit code 2)."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """A parsed topology: generation, chip grid and the names libtpu wants."""

    chip: Chip
    grid: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def name(self) -> str:
        return f"{self.chip.topo}:{'x'.join(map(str, self.grid))}"

    @property
    def accelerator_type(self) -> str:
        return f"{self.chip.accel}-{self.chips * self.chip.cores_per_chip}"


def default_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The chip grid Cloud TPU uses for a slice of `chips` chips (powers of two)."""
    if chips < 1 or chips & (chips - 1):
        raise BadConfig(f"{chips} chips is not a power of two; give the grid explicitly ({TOPOLOGY_HELP})")
    n = chips.bit_length() - 1
    if dims == 2:
        return (2 ** (n // 2), 2 ** (n - n // 2))
    if chips == 4:
        return (2, 2, 1)
    if chips < 4:
        return (1, chips, 1)
    return tuple(2 ** (n // 3 + (1 if i >= 3 - n % 3 else 0)) for i in range(3))


def parse_topology(name: str) -> Topology:
    """`v5p-64` / `v5litepod-256` / `v5p:2x4x4` -> Topology; BadConfig listing the valid forms otherwise."""
    m = re.fullmatch(r"(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)*))", name.strip().lower())
    gen = ALIASES.get(m.group(1), m.group(1)) if m else None
    if gen not in CHIPS:
        raise BadConfig(f"unknown TPU topology {name!r}; expected {TOPOLOGY_HELP}")
    chip = CHIPS[gen]
    if m.group(2):
        count = int(m.group(2))
        if count % chip.cores_per_chip:
            raise BadConfig(f"{name}: {gen} names count {chip.cores_per_chip} TensorCores per chip")
        return Topology(chip, default_grid(count // chip.cores_per_chip, chip.dims))
    grid = tuple(int(x) for x in m.group(3).split("x"))
    if len(grid) != chip.dims:
        raise BadConfig(f"{name}: {gen} chip grids have {chip.dims} dimensions; expected {TOPOLOGY_HELP}")
    return Topology(chip, grid)


def libtpu_env(topo: Topology) -> dict[str, str]:
    """The environment under which libtpu compiles for `topo` without probing for hardware."""
    return {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": topo.accelerator_type,
            "TPU_WORKER_HOSTNAMES": "localhost", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def tpu_devices(topo: Topology) -> list:
    """The devices of a TPU topology (one per chip), from libtpu; RuntimeError when libtpu is missing."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise RuntimeError("libtpu is not installed: `pip install -e .[tpu]` (jax[tpu]) to compile for TPU") from e
    os.environ.update(libtpu_env(topo))
    import jax
    from jax.experimental import topologies
    if jax.config.jax_platforms != "cpu":
        raise RuntimeError("set JAX_PLATFORMS=cpu before jax is imported: the AOT compile must not open a TPU "
                           "backend (libtpu would probe for hardware)")
    kw = {"chip_config_name": "megacore"} if topo.chip.cores_per_chip == 2 else {}
    return list(topologies.get_topology_desc(topology_name=topo.name, platform="tpu", **kw).devices)


# ---------------------------------------------------------------------------------------------------------
# The model a config trains, without its weights.

def _hf_json(path: str) -> dict | None:
    p = Path(path) / "config.json" if path else None
    return json.loads(p.read_text()) if p is not None and p.is_file() else None


def _llm_sizes(config: Any) -> dict:
    """LLM sizes: the llama_dir's config.json, else the published sizes of its (or the tokenizer's) name."""
    for path in (config.init.llama_dir, config.tokenizer):
        raw = _hf_json(path)
        if raw and "hidden_size" in raw:
            keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "vocab_size", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                    "tie_word_embeddings")
            return {k: raw[k] for k in keys if k in raw}
        if path and Path(path).name in KNOWN_LLMS:
            return dict(KNOWN_LLMS[Path(path).name])
    raise BadConfig(f"cannot tell the LLM's architecture: init.llama_dir={config.init.llama_dir!r} and "
                    f"tokenizer={config.tokenizer!r} are neither HF directories on disk nor known names "
                    f"{sorted(KNOWN_LLMS)}; give a directory with config.json, or init.source=random with "
                    "model.text sizes")


def _vocab(config: Any, sizes: dict) -> tuple[int, int, int]:
    """(tokenizer size, <image> id, <pad> id) of the config's tokenizer (loaded when on disk)."""
    if config.tokenizer and Path(config.tokenizer).exists():
        from xllava_jax.tokenizer.spm import load_tokenizer
        tok = load_tokenizer(config.tokenizer)
        return tok.vocab_size, tok.image_token_id, tok.pad_id
    base = KNOWN_LLMS.get(Path(config.tokenizer).name, sizes)["vocab_size"]
    return base + ADDED_TOKENS, base, base + 1


def _tok_stub(config: Any, sizes: dict) -> Any:
    size, image, pad = _vocab(config, sizes)
    return types.SimpleNamespace(vocab_size=size, image_token_id=image, pad_id=pad)


def model_for(config: Any) -> Any:
    """The model config a stage trains (architecture + the config's execution settings), without weights."""
    from xllava_jax import checkpoint
    from xllava_jax.models.clip import CLIPVisionConfig
    from xllava_jax.models.llama import LlamaConfig
    from xllava_jax.models.llava import LlavaConfig
    from xllava_jax.models.vocab import padded_size
    from xllava_jax.train.initialize import exec_kwargs, random_config, with_exec
    ckpt = config.init.checkpoint if config.init.source == "checkpoint" else ""
    if ckpt and Path(ckpt).exists():
        cfg = checkpoint.load_config(checkpoint.resolve(ckpt))
    elif config.init.source == "random":
        if config.tokenizer and Path(config.tokenizer).exists():
            from xllava_jax.tokenizer.spm import load_tokenizer
            return random_config(config, load_tokenizer(config.tokenizer))
        text = config.model.text.vocab_size
        if text == -1:
            raise BadConfig(f"init.source=random with model.text.vocab_size=-1 needs the tokenizer on disk "
                            f"(tokenizer={config.tokenizer!r})")
        return random_config(config, types.SimpleNamespace(vocab_size=text, image_token_id=text - 2, pad_id=text - 1))
    else:
        sizes = _llm_sizes(config)
        tok = _tok_stub(config, sizes)
        vocab = padded_size(max(tok.vocab_size, sizes["vocab_size"]), config.init.pad_vocab_to)
        text = LlamaConfig(**{**sizes, "vocab_size": vocab}, **exec_kwargs(config.model))
        if config.model.kind == "llama":
            return text
        clip = _hf_json(config.init.clip_dir)
        vision = dict(config.model.vision)
        if clip:
            clip = clip.get("vision_config", clip)
            vision.update({k: clip[k] for k in vision if k in clip})
        cfg = LlavaConfig(vision=CLIPVisionConfig(**vision), text=text, projector_type=config.model.projector_type,
                          image_token_id=tok.image_token_id, pad_token_id=tok.pad_id,
                          vision_feature_layer=config.model.vision_feature_layer)
    if isinstance(cfg, LlamaConfig) and config.model.kind == "llava":
        cfg = LlavaConfig(vision=CLIPVisionConfig(**dict(config.model.vision)), text=cfg,
                          projector_type=config.model.projector_type, image_token_id=cfg.vocab_size - 2,
                          pad_token_id=cfg.vocab_size - 1, vision_feature_layer=config.model.vision_feature_layer)
    return with_exec(cfg, config.model)


# ---------------------------------------------------------------------------------------------------------
# Compiling and reporting.

def abstract_batch(config: Any, cfg: Any, mesh: Any) -> dict:
    """ShapeDtypeStructs of one global training batch (as inputs.host_batch makes it), sharded by row."""
    import jax
    import jax.numpy as jnp
    from xllava_jax import sharding
    from xllava_jax.models.llava import LlavaConfig
    b, t = config.train.batch_size, config.data.max_len
    shapes = {k: ((b, t), jnp.int32) for k in ("input_ids", "labels", "attention_mask", "positions", "segment_ids")}
    if isinstance(cfg, LlavaConfig) and config.stage in (1, 2):
        s = cfg.vision.image_size
        shapes["pixel_values"] = ((b, config.data.max_images_per_row, s, s, 3), jnp.float32)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))
            for k, (shape, dtype) in shapes.items()}


def _leaf_bytes(tree: Any) -> int:
    """Per-device bytes of a tree of sharded ShapeDtypeStructs."""
    import jax
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def _cost(compiled: Any) -> dict:
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


def _compile_step(config: Any, cfg: Any, mesh: Any) -> tuple[Any, Any, dict, float]:
    """(compiled step, abstract state, abstract batch, compile seconds) of the stage's train step."""
    from xllava_jax.train.harness import stage_harness
    h = stage_harness(config, cfg, 1000, mesh)
    state = h.abstract_state()
    batch = abstract_batch(config, cfg, mesh)
    start = time.perf_counter()
    compiled = h.jit_step(batch).lower(state, batch).compile()
    return compiled, state, batch, time.perf_counter() - start


def _with_layers(cfg: Any, text: int, vision: int) -> Any:
    """`cfg` unrolled (scan_layers False) with `text` decoder and `vision` CLIP layers."""
    from xllava_jax.models.llava import LlavaConfig
    if not isinstance(cfg, LlavaConfig):
        return dataclasses.replace(cfg, num_hidden_layers=text, scan_layers=False)
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, num_hidden_layers=text, scan_layers=False),
                               vision=dataclasses.replace(cfg.vision, num_hidden_layers=vision, scan_layers=False))


def one_host(topo: Topology) -> Topology:
    """The 4-chip, single-host slice of the same generation."""
    return Topology(topo.chip, (2, 2, 1) if topo.chip.dims == 3 else (2, 2))


def layer_cost(config: Any, cfg: Any, devices: list) -> tuple[float, float]:
    """(FLOPs of one full step summed over all devices, compile seconds), from unrolled 1-2 layer compiles on
    `devices` (a single-host slice: see compile_train).

    XLA's cost analysis counts a while loop's body once, so the scanned step (layers, grad_accum microbatches)
    is undercounted. Cost is linear in the layer counts: F(a, b) = c + a * t + b * v for a decoder and b CLIP
    layers, so F(1, 2), F(2, 2) and F(1, 3) give F(L, Lv) (one microbatch, times grad_accum). The cost compiles
    use XLA attention (a Pallas kernel reports no FLOPs: for splash this counts the masked blocks it skips) and
    plain FSDP over `devices`, the microbatch rounded up to a multiple of their number and the count scaled back.
    """
    from xllava_jax.models.llava import LlavaConfig
    from xllava_jax.sharding import make_mesh
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
        compiled, _, _, s = _compile_step(micro, _with_layers(cfg, a, b), mesh)
        costs.append(float(_cost(compiled).get("flops", 0.0)) * n)
        seconds += s
    total = costs[0] + (text_layers - 1) * (costs[1] - costs[0])
    if llava:
        total += (cfg.vision.num_hidden_layers - 2) * (costs[2] - costs[0])
    return total * accum * rows / padded, seconds


def compile_train(config: Any, cfg: Any, devices: list, cost_devices: list | None = None) -> dict:
    """Compile the stage's train step on `devices`; the report (bytes per device, flops, timings).

    Memory is the compiled step's own. FLOPs come from layer_cost on `cost_devices` (a single-host slice of
    the same chip), spread evenly over `devices`: on multi-host v5p slices the TPU compiler's count of the
    sharded step itself is short (0.67x the analytic count on v5p-64 for a plain decoder, exact on 4 chips;
    bench/SCALE.md). Without `cost_devices`, the scanned step's own (under)count."""
    from xllava_jax.sharding import make_mesh
    from xllava_jax.train.metrics import step_flops
    from xllava_jax.train.validate import trainable_groups
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    compiled, state, batch, seconds = _compile_step(config, cfg, mesh)
    mem, cost = compiled.memory_analysis(), _cost(compiled)
    kernels = compiled.as_text().count("tpu_custom_call")
    flops, optimal = float(cost.get("flops", 0.0)), float(cost.get("optimal_seconds", -1.0))
    cost_s = 0.0
    if cost_devices:
        total_flops, cost_s = layer_cost(config, cfg, cost_devices)
        flops = total_flops / len(devices)
    params, opt = _leaf_bytes((state.params, state.frozen)), _leaf_bytes(state.opt_state)
    grads = _leaf_bytes(state.params) * (2 if config.train.grad_accum > 1 else 1)
    temps = mem.temp_size_in_bytes
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + temps
             + mem.generated_code_size_in_bytes)
    b, t = config.train.batch_size, config.data.max_len
    images = b * config.data.max_images_per_row if "pixel_values" in batch else 0
    return {"bytes_per_device": {"params": params, "optimizer": opt, "gradients": grads,
                                 "temporaries": temps, "total": total},
            "flops": flops, "flops_exact": bool(cost_devices), "optimal_seconds": optimal, "cost_compile_s": cost_s,
            "model_flops": step_flops(cfg, trainable_groups(config), b * t, t, images), "tokens": b * t,
            "compile_s": seconds, "mosaic_kernels": kernels}


def compile_generate(config: Any, cfg: Any, devices: list, batch: int, prompt_len: int, max_len: int) -> dict:
    """Compile inference prefill (prompt_len tokens into a max_len cache) and one decode step."""
    import jax
    import jax.numpy as jnp
    from xllava_jax import sharding
    from xllava_jax.infer.generate import text_config
    from xllava_jax.models.llama import init_cache
    from xllava_jax.models.llava import LlavaConfig
    from xllava_jax.models.params import abstract_params, build_model
    from xllava_jax.sharding import make_mesh
    from xllava_jax.train.state import param_shardings
    from xllava_jax.train.step import in_mesh
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    rules = tuple(tuple(r) for r in config.logical_axis_rules)
    text = text_config(cfg)
    shard = param_shardings(cfg, mesh, rules)
    params = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    abstract_params(cfg), shard)
    cache_shape = jax.eval_shape(lambda: init_cache(text, batch, max_len))
    row = lambda n: sharding.batch_sharding(mesh, n)  # noqa: E731
    cache = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            None, ("data", "fsdp")))), cache_shape)
    lm = (lambda p: p["language_model"]) if isinstance(cfg, LlavaConfig) else (lambda p: p)

    decoder = build_model(text)

    def run(p, ids, key_mask, cache, index):
        return decoder.apply({"params": lm(p)}, ids, key_mask, None, None, cache, index)

    out = {"bytes_per_device": {"params": _leaf_bytes(params), "optimizer": 0, "gradients": 0, "temporaries": 0,
                                "total": 0}, "flops": 0.0, "optimal_seconds": 0.0, "model_flops": 0.0,
           "tokens": 0, "compile_s": 0.0}
    for t in (prompt_len, 1):
        ids = jax.ShapeDtypeStruct((batch, t), jnp.int32, sharding=row(2))
        key_mask = jax.ShapeDtypeStruct((batch, max_len), jnp.int32, sharding=row(2))
        index = jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh))
        fn = in_mesh(jax.jit(run, donate_argnums=(3,)), mesh, rules)
        start = time.perf_counter()
        compiled = fn.lower(params, ids, key_mask, cache, index).compile()
        out["compile_s"] += time.perf_counter() - start
        mem, cost = compiled.memory_analysis(), _cost(compiled)
        total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                 + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
        b = out["bytes_per_device"]
        b["temporaries"], b["total"] = max(b["temporaries"], mem.temp_size_in_bytes), max(b["total"], total)
        out["flops"] += float(cost.get("flops", 0.0))
        out["optimal_seconds"] += max(float(cost.get("optimal_seconds", 0.0)), 0.0)
        out[f"{'prefill' if t > 1 else 'decode'}_s"] = max(float(cost.get("optimal_seconds", 0.0)), 0.0)
    out["model_flops"] = 2.0 * batch * (prompt_len + 1) * _matmul_params(text)
    out["tokens"] = batch * (prompt_len + 1)
    return out


def _matmul_params(text: Any) -> float:
    """Decoder matmul parameters (no embedding table)."""
    h, i, n = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    kv = text.num_key_value_heads * text.dim_per_head
    return n * (2 * h * h + 2 * h * kv + 3 * h * i) + h * text.vocab_size


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


def format_report(r: dict, what: str, attention: str) -> str:
    """Human-readable lines of a summary."""
    g = lambda x: f"{x / GiB:8.2f} GiB"  # noqa: E731
    b = r["bytes_per_device"]
    lines = [f"{what} on {r['topology']} ({r['grid']}, {r['num_devices']} devices), attention={attention}",
             f"  params       {g(b['params'])}", f"  optimizer    {g(b['optimizer'])}",
             f"  gradients    {g(b['gradients'])}", f"  temporaries  {g(b['temporaries'])}",
             f"  total        {g(b['total'])}  of HBM {g(r['hbm_bytes'])}: {'fits' if r['fits'] else 'DOES NOT FIT'}",
             (f"  flops/device {r['flops']:.3e} ({r['flops'] / r['model_flops_per_device']:.2f}x model FLOPs)   "
              f"est step >= {r['est_step_s']:.3f} s   est MFU <= {100 * r['est_mfu']:.1f}%   "
              f"<= {r['tokens_per_s']:.0f} tokens/s" if r["est_step_s"] is not None else
              f"  flops/device {r['flops']:.3e}: a loop body counted once, no step time or MFU (the train step "
              f"without --noexact_cost counts them whole)"),
             f"  compile      {r['compile_s']:.1f} s (+ {r.get('cost_compile_s', 0.0):.1f} s for the FLOP count)"]
    return "\n".join(lines)


def run(config: Any, topology: str, what: str = "train", gen: Sequence[int] = (8, 1024, 2048), hbm: float = 0.0,
        exact_cost: bool = True) -> tuple[dict, str]:
    """Compile `what` of `config` for `topology`; (summary, attention used). BadConfig for bad settings."""
    topo = parse_topology(topology)
    if what not in ("train", "generate"):
        raise BadConfig(f"--what={what!r}; expected train or generate")
    devices = tpu_devices(topo)
    from xllava_jax.models.layers import resolve_attention
    from xllava_jax.train.validate import ConfigError, validate
    config.model.attention = resolve_attention(config.model.attention, "tpu")
    hosts = max(d.process_index for d in devices) + 1
    check = config.copy_and_resolve_references()
    check.init.source = "random"  # no weights are read: the init paths need not exist here
    try:
        validate(check, num_devices=len(devices), num_processes=hosts)
    except ConfigError as e:
        raise BadConfig(str(e)) from e
    cfg = model_for(config)
    try:
        cfg.validate() if hasattr(cfg, "validate") else None
    except ValueError as e:
        raise BadConfig(str(e)) from e
    cost_devices = tpu_devices(one_host(topo)) if exact_cost and what == "train" else None
    report = (compile_train(config, cfg, devices, cost_devices) if what == "train"
              else compile_generate(config, cfg, devices, *gen))
    return summarize(report, topo, len(devices), hbm), config.model.attention


def main(argv: Sequence[str]) -> int:
    """CLI entry (absl flags below)."""
    del argv
    config = _CONFIG.value
    try:
        summary, attention = run(config, _TOPOLOGY.value, _WHAT.value,
                                 (_GEN_BATCH.value, _GEN_PROMPT.value, _GEN_MAX.value), _HBM_GIB.value * GiB,
                                 _EXACT_COST.value)
    except BadConfig as e:
        print(f"bad config: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "libtpu" not in str(e) and "JAX_PLATFORMS" not in str(e):
            traceback.print_exc()
            return 3
        print(e, file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - the compile itself failed: not "does not fit"
        traceback.print_exc()
        return 3
    print(format_report(summary, _WHAT.value, attention))
    if _JSON.value:
        Path(_JSON.value).parent.mkdir(parents=True, exist_ok=True)
        Path(_JSON.value).write_text(json.dumps({**summary, "attention": attention, "what": _WHAT.value,
                                                 "remat_policy": config.model.remat_policy}, indent=1))
    return 0 if summary["fits"] else 1


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported: the TPU is only a compile target
    from absl import app, flags
    from ml_collections import config_flags
    _CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:arg])",
                                              lock_config=False)
    _TOPOLOGY = flags.DEFINE_string("topology", None, TOPOLOGY_HELP)
    _JSON = flags.DEFINE_string("json", "", "write the summary as JSON here")
    _WHAT = flags.DEFINE_string("what", "train", "train (the stage's step) | generate (prefill + one decode step)")
    _HBM_GIB = flags.DEFINE_float("hbm_gib", 0.0, "HBM budget per device in GiB (0: the chip's HBM)")
    _EXACT_COST = flags.DEFINE_bool("exact_cost", True, "FLOPs/step time from extra unrolled 1-2 layer compiles "
                                    "(XLA counts a scanned layer once); off: memory only, FLOPs undercounted")
    _GEN_BATCH = flags.DEFINE_integer("gen_batch", 8, "generate: sequences")
    _GEN_PROMPT = flags.DEFINE_integer("gen_prompt_len", 1024, "generate: prompt tokens (prefill)")
    _GEN_MAX = flags.DEFINE_integer("gen_max_len", 2048, "generate: KV-cache length")
    flags.mark_flags_as_required(["config", "topology"])
    app.run(lambda argv: sys.exit(main(argv)))
