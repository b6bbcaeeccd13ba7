"""bench/SCALE.md from `python -m xllava_jax.aot` runs of the shipped configs (a script, not a test).

Each row is one AOT compile (CPU only, libtpu; `pip install -e .[tpu]`) of a shipped config's training step at
sequence 2048 for a Cloud TPU slice, its JSON kept in bench/scale/<row>.json. Compiles of a 13B step take about
5 minutes and 2-3 GB of RAM here, plus about as long again for the FLOP count, so rows run one at a time and a
JSON already present is reused (delete it to redo the row). Rows without a JSON are listed in the table with
the command that produces them.

    python bench/scale.py --run 'llava15_13b_s2/v5p-64/*'   # compile the rows matching a glob, then write the table
    python bench/scale.py                                   # table only, from the JSONs present
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "scale"
GiB = 2 ** 30
CONFIGS = {  # row name -> config file[:arg]
    "llava15_7b_s1": "configs/llava15_7b.py:stage1", "llava15_7b_s2": "configs/llava15_7b.py:stage2",
    "llava15_13b_s1": "configs/llava15_13b.py:stage1", "llava15_13b_s2": "configs/llava15_13b.py:stage2",
    "xllava_13b_s0": "configs/xllava_13b_stage0.py", "xllava_13b_s1": "configs/xllava_13b_stage1.py",
    "xllava_13b_s2": "configs/xllava_13b_stage2.py",
    "lrm_13b_s1": "configs/lrm_llava_13b.py:stage1", "lrm_13b_s2": "configs/lrm_llava_13b.py:stage2",
}
TOPOLOGIES = ("v5p-64", "v5litepod-256", "v4-64", "v6e-64")
VARIANTS = {  # variant name -> extra overrides (attention auto = splash on TPU)
    "splash": [], "xla": ["--config.model.attention=xla"],
    "splash_remat_dots": ["--config.model.remat_policy=dots_no_batch"],
}


BATCH = {"s0": 64, "s1": 256, "s2": 128}  # shipped global batch per stage
BATCH_OF = {"lrm_13b_s1": 192, "lrm_13b_s2": 256}  # configs whose batch differs from their stage's
CHIPS = {"v5p-64": 32, "v5litepod-256": 256, "v4-64": 32, "v6e-64": 64}


def batch_of(config: str) -> int:
    """The shipped global batch of a row's config."""
    return BATCH_OF.get(config, BATCH[config.rsplit("_", 1)[1]])


def mesh_overrides(config: str, topology: str) -> list[str]:
    """Tensor parallelism where the slice has more chips than the global batch has rows (one row per data shard)."""
    tensor = CHIPS[topology] // batch_of(config)
    return [f"--config.mesh.tensor={tensor}"] if tensor > 1 else []


def rows() -> list[str]:
    """Every row name: config/topology/variant (a slice whose chips do not divide the config's batch has none)."""
    return [f"{c}/{t}/{v}" for c in CONFIGS for t in TOPOLOGIES for v in VARIANTS
            if max(CHIPS[t], batch_of(c)) % min(CHIPS[t], batch_of(c)) == 0]


def command(row: str, exact_cost: bool = True) -> list[str]:
    """The AOT command of a row (`exact_cost` False: memory only, about half the time)."""
    config, topology, variant = row.split("/")
    return [sys.executable, "-m", "xllava_jax.aot", "--config", CONFIGS[config], "--topology", topology,
            "--config.data.max_len=2048", "--json", str(OUT / f"{row.replace('/', '__')}.json"), *VARIANTS[variant],
            *mesh_overrides(config, topology),
            *([] if exact_cost else ["--noexact_cost"])]


def run_row(row: str, exact_cost: bool = True) -> None:
    """Compile one row (skipped when its JSON exists)."""
    path = OUT / f"{row.replace('/', '__')}.json"
    if path.exists():
        return
    OUT.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    r = subprocess.run(command(row, exact_cost), cwd=ROOT, capture_output=True, text=True, env={**os.environ})
    print(f"{row}: exit {r.returncode} in {time.perf_counter() - start:.0f} s", flush=True)
    if r.returncode not in (0, 1):
        print(r.stderr[-3000:], file=sys.stderr)


def table() -> str:
    """The markdown of SCALE.md."""
    head = ("| config | slice | attention / remat | params | optimizer | gradients | temporaries | total / HBM | fits "
            "| FLOPs / model FLOPs | est. step >= | est. MFU <= | tokens/s <= | compile |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines, missing, marked = [head], [], False
    for row in rows():
        path = OUT / f"{row.replace('/', '__')}.json"
        if not path.exists():
            missing.append(row)
            continue
        j = json.loads(path.read_text())
        b = {k: v / GiB for k, v in j["bytes_per_device"].items()}
        config, topology, variant = row.split("/")
        old = "" if "model_flops_per_device" in j else " (a)"
        lines.append(
            f"| {config}{old} | {topology} ({j['num_devices']} chips) | {j['attention']} / {j.get('remat_policy', '')} "
            f"| {b['params']:.1f} | {b['optimizer']:.1f} | {b['gradients']:.1f} | {b['temporaries']:.1f} "
            f"| {b['total']:.1f} / {j['hbm_bytes'] / GiB:.1f} | {'yes' if j['fits'] else '**no**'} "
            + (f"| {j['flops'] / j['model_flops_per_device']:.2f} | {j['est_step_s']:.2f} s | {100 * j['est_mfu']:.0f}% "
               f"| {j['tokens_per_s']:,.0f} " if j.get("cost_compile_s") and not old else "| - | - | - | - ") +
            f"| {j['compile_s'] + j.get('cost_compile_s', 0):.0f} s |")
        marked = marked or bool(old)
    text = "\n".join(lines)
    if marked:
        text += ("\n\n(a) compiled before frozen towers were held in bf16 (`model.frozen_dtype`: CLIP then fp32, "
                 "at most 0.02 GiB more per device in these stage-2 rows) and before the FLOP count moved to a "
                 "4-chip slice: no step time or MFU shown.")
    if missing:
        text += "\n\nRows not compiled yet (one command each; `python bench/scale.py --run ROW` does it too):\n\n"
        text += "\n".join(f"- `{r}`: `{' '.join(['python'] + command(r)[1:])}`".replace(str(ROOT) + "/", "")
                          for r in missing)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], help="glob of rows to compile (config/slice/variant)")
    p.add_argument("--memory_only", action="store_true", help="skip the FLOP-count compiles (no step time / MFU)")
    args = p.parse_args()
    for pattern in args.run:
        for row in fnmatch.filter(rows(), pattern):
            run_row(row, not args.memory_only)
    intro = (ROOT / "bench" / "SCALE.md").read_text().split("<!-- table -->")[0] if (
        ROOT / "bench" / "SCALE.md").exists() else "# Scale table\n\n"
    (ROOT / "bench" / "SCALE.md").write_text(intro + "<!-- table -->\n" + table() + "\n")


if __name__ == "__main__":
    main()
