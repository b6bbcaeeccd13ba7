"""bench/gpu_suite.py dry run: `--tiny` runs every part's code path on CPU in subprocesses, with grain and
ml_collections made unimportable (the GPU image has neither), and writes a complete report."""

import pytest
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_suite  # noqa: E402  (stdlib only at import: the parts import jax/torch in their subprocesses)

BLOCK = 'import sys\nfor _name in ("grain", "ml_collections"):\n    sys.modules[_name] = None\n'


def test_helpers():
    from decode_bench import HBM_TBS  # the decode part's bandwidth table

    assert gpu_suite.by_kind(gpu_suite.PEAK_BF16_TFLOPS, "NVIDIA H200") == 989.0
    assert gpu_suite.by_kind(HBM_TBS, "NVIDIA H200") == 4.8
    assert gpu_suite.by_kind(HBM_TBS, "NVIDIA H100 80GB HBM3") == 3.35
    assert gpu_suite.by_kind(HBM_TBS, "NVIDIA GH200 480GB") == 4.0
    assert gpu_suite.by_kind(gpu_suite.PEAK_BF16_TFLOPS, "cpu") is None
    assert gpu_suite.batch_candidates((16, 8, 4, 2)) == [16, 8, 4, 2]
    assert gpu_suite.batch_candidates((16, 8, 4, 2), cap=8) == [8, 4, 2]
    assert gpu_suite.batch_candidates((16, 8, 4, 2), None, 30e9, 100e9) == [2]  # 16 rows needed 480 GB
    assert gpu_suite.halvings(16) == [8, 4, 2, 1] and gpu_suite.halvings(1) == [1]
    assert gpu_suite.is_oom(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"))
    assert not gpu_suite.is_oom(ValueError("bad shape"))


@pytest.mark.slow
def test_tiny_suite_runs_every_part_without_grain_or_ml_collections(tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(block), os.environ.get("PYTHONPATH")])),
               JAX_PLATFORMS="cpu", OUT=str(tmp_path / "out"))
    for name in ("grain", "ml_collections"):  # the block works (so the suite's success proves it avoids them)
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert probe.returncode != 0 and "halted" in probe.stderr, probe.stderr

    run = subprocess.run([sys.executable, "bench/gpu_suite.py", "--tiny"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_report.json").read_text())

    assert report["tiny"] is True
    assert list(report["parts"]) == ["train_xla", "compare", "decode"]
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part.get("error_tail"))
        assert part["wall_s"] <= part["limit_s"] and "result" in part
        assert part["log"] in os.listdir(tmp_path / "out")

    train = report["parts"]["train_xla"]["result"]
    assert train["environment"]["platform"] == "cpu" and train["model"]["language_model_params"] > 0
    statuses = [(c["batch"], c["status"]) for c in train["configs"]]
    assert statuses == [(4, "oom"), (2, "ok")]  # the simulated OOM falls back to the next batch
    best = train["best"]
    assert best["attention"] == "xla" and best["batch"] == 2 and math.isfinite(best["loss"])
    assert best["tokens_per_s"] > 0 and best["model_tflops_per_s"] > 0 and best["mfu"] is None  # no CPU peak
    assert set(best["step_s"]) == {"median", "min", "max", "n"} and best["compile_s"] > 0

    compare = report["parts"]["compare"]["result"]["result"]
    assert compare["batch"] == 1 and compare["ratio"] > 0
    assert compare["ours_step_s"]["n"] == compare["torch_step_s"]["n"] == gpu_suite.TINY.compare_repeats
    assert compare["ratio_min_max"][0] <= compare["ratio"] <= compare["ratio_min_max"][1]

    decode = report["parts"]["decode"]["result"]
    assert set(decode["runs"]) == {f"steps_per_call_{k}" for k in gpu_suite.TINY.decode_steps_per_call}
    assert decode["best"]["tokens_per_s"] > 0 and decode["best"]["share_of_bound"] is None  # no CPU bandwidth
    assert decode["read_gb_per_token"] < decode["weight_gb"]

    s = report["summary"]
    assert s["mfu_setting"] == {"attention": "xla", "remat": "full", "batch": 2}
    assert s["torch_ratio"] == compare["ratio"] and s["decode_tokens_per_s"] == decode["best"]["tokens_per_s"]
    assert set(s["goals"]) == set(gpu_suite.GOALS)
    for name in report["parts"]:  # the stdout table has a row per part
        assert any(line.startswith(name) and " ok " in line for line in run.stdout.splitlines()), run.stdout


def test_a_part_over_its_limit_is_killed_and_reported(tmp_path):
    run = subprocess.run([sys.executable, "bench/gpu_suite.py", "--tiny", "--parts", "decode", "--limits", "decode=1"],
                         cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", OUT=str(tmp_path)), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    part = json.loads((tmp_path / "gpu_report.json").read_text())["parts"]["decode"]
    assert part["status"] == "timeout" and part["returncode"] is None and part["wall_s"] < 30
    assert "decode" in run.stdout and "timeout" in run.stdout
