"""Ahead-of-time compile of a config's training step (or the inference engine's generation programs) for a
Cloud TPU topology, on a machine without a TPU (libtpu's compiler; `pip install -e .[tpu]`).

  python -m xllava_jax.aot --config configs/llava15_13b.py:stage2 --topology v5p-64 [--config.a.b=v ...]
      [--json OUT] [--what train|generate] [--gen_batch 8 --gen_prompt_len 1024 --gen_max_len 2048]

The config's mesh is built on the topology's devices; the exact jitted step of the stage (train.harness:
shardings, donation, remat, grad_accum) is lowered on ShapeDtypeStruct inputs (nothing is allocated) and
compiled; `--what generate` compiles infer.generate's prefill and decode as infer.Engine runs them (its params,
batch and KV-cache shardings). Printed per device: parameter, optimizer-state, gradient and temporary bytes
(compiler's memory_analysis; params/optimizer/gradients from the state's shardings), the chip's HBM and whether
the total fits, the compiler's FLOP count (cost_analysis of unrolled 1-2 layer compiles on a 4-chip slice of the
same chip, extrapolated: aot/cost.py layer_cost) and the step time it bounds (max of FLOPs / peak and the
compiler's roofline `optimal_seconds`), and the MFU and tokens/s they imply: a lower bound on step time, an upper
bound on MFU. Exit 0 fits, 1 does not, 2 bad config, 3 the compile failed. docs/multihost.md has the details.

Topologies: Cloud TPU names (v4-N and v5p-N count TensorCores, 2 per chip; v5litepod-N / v5e-N and v6e-N
count chips) or an explicit chip grid `v5p:2x4x4`, `v5e:2x2`. The model's architecture comes from the
weights the config names when they exist on disk (HF config.json or a checkpoint's model config), else
from the published sizes of the named model (models/presets.py), else from config.model (init.source random):
train.initialize.resolve_model_config.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported: the TPU is only a compile target

import json  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from xllava_jax.aot.chips import GiB, TOPOLOGY_HELP, BadConfig  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:arg])",
                                          lock_config=False)
_TOPOLOGY = flags.DEFINE_string("topology", None, TOPOLOGY_HELP)
_JSON = flags.DEFINE_string("json", "", "write the summary as JSON here ('': no file)")
_WHAT = flags.DEFINE_string("what", "train", "train (the stage's step) | generate (the engine's prefill and decode)")
_HBM_GIB = flags.DEFINE_float("hbm_gib", 0.0, "HBM budget per device in GiB (0: the chip's HBM)")
_EXACT_COST = flags.DEFINE_bool("exact_cost", True, "FLOPs/step time from extra unrolled 1-2 layer compiles "
                                "(XLA counts a scanned layer once); off: memory only, FLOPs undercounted")
_GEN_BATCH = flags.DEFINE_integer("gen_batch", 8, "generate: sequences")
_GEN_PROMPT = flags.DEFINE_integer("gen_prompt_len", 1024, "generate: prompt tokens (prefill)")
_GEN_MAX = flags.DEFINE_integer("gen_max_len", 2048, "generate: KV-cache length (prompt + new tokens)")
flags.mark_flags_as_required(["config", "topology"])


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


def main(argv: Sequence[str]) -> int:
    """CLI entry (absl flags above)."""
    del argv
    from xllava_jax.aot.compile import run
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
    app.run(lambda argv: sys.exit(main(argv)))
