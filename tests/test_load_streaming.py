"""Loading streams: `infer.loading.load_model` of a bf16 llava-hf directory (~1.2 GB of random weights in the
LLaVA-1.5 key layout, narrowed 7B shapes, written by bench/real_shape_build.py; at that size a load's fixed
~0.1 GB stays well inside the margin) and an `infer.Engine` built on
its params raise the process's peak resident memory by at most 1.2x the weight bytes (a whole-tree host copy,
or a host tree next to the device one, is 2x). The load runs in a fresh subprocess that reports its peak
(VmHWM) growth over the resident size before loading, after loading a tiny model of the same layout first (XLA's
compiler takes ~0.4 GB once, whatever the model's size). Loaded with bf16 compute on a CPU with AVX512-BF16, the
Linear weights stay in the mapped file (cpu_kernels.MappedKernel): the load itself then grows by at most a fifth
of the file (embeddings, norms and biases are copied)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xllava_jax.models import cpu_kernels

ROOT = Path(__file__).resolve().parent.parent
MAX_GROWTH = 1.2
SHAPE = ["--layers", "16", "--vision_layers", "2", "--hidden", "1536", "--mlp", "4096", "--heads", "12"]
TINY = ["--layers", "2", "--vision_layers", "2", "--hidden", "128", "--mlp", "256", "--heads", "2"]

LOAD = r"""
import json, sys
import jax
def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))
from xllava_jax.infer.generate import Engine
from xllava_jax.infer.loading import load_model
from xllava_jax.models.cpu_kernels import mapped_leaves
dtype = sys.argv[3] if sys.argv[3] != "-" else None
load_model(sys.argv[2], dtype=dtype)
before = status("VmRSS")
model, params = load_model(sys.argv[1], dtype=dtype)
engine = Engine(model, params)
leaves = jax.tree.leaves(engine.params)
print(json.dumps({"growth": status("VmHWM") - before, "weights": sum(x.nbytes for x in leaves),
                  "device_arrays": all(isinstance(x, jax.Array) for x in leaves),
                  "mapped": len(mapped_leaves(engine.params))}))
"""


def env() -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def build(out: Path, shape: list[str]) -> Path:
    subprocess.run([sys.executable, str(ROOT / "bench" / "real_shape_build.py"), str(out), *shape], check=True,
                   env=env(), capture_output=True)
    return out


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llava")
    return build(root / "narrow", SHAPE), build(root / "tiny", TINY)


def measure(path: Path, warmup: Path, dtype: str = "-") -> dict:
    run = subprocess.run([sys.executable, "-c", LOAD, str(path), str(warmup), dtype], env=env(), capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_hf_load_streams(hf_dirs):
    r = measure(*hf_dirs)
    assert r["device_arrays"]
    assert r["weights"] > 500e6
    assert r["growth"] <= MAX_GROWTH * r["weights"], (f"peak resident growth {r['growth'] / 1e6:.0f} MB for "
                                                      f"{r['weights'] / 1e6:.0f} MB of weights")


@pytest.mark.slow
@pytest.mark.skipif(not cpu_kernels.gemm_available(), reason="the CPU has no AVX512-BF16: nothing is mapped")
def test_mapped_hf_load_copies_no_linear_weight(hf_dirs):
    r = measure(*hf_dirs, dtype="bfloat16")
    file_bytes = (hf_dirs[0] / "model.safetensors").stat().st_size
    assert r["mapped"] == 6 + 2 + 7 + 1  # vision layer, projector, decoder layer, lm_head
    assert file_bytes > 500e6
    assert r["growth"] <= 0.2 * file_bytes, f"peak resident growth {r['growth'] / 1e6:.0f} MB"
