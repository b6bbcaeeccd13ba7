"""`python -m xllava_jax.main --config configs/demo.py --workdir D` runs the demo's stage list (base, stage0 with
the vocabulary grown to the expanded tokenizer, stage1, stage2, each from the one before) with overrides, writes
metrics.jsonl and TensorBoard events, logs eval with the modality gap, leaves checkpoints that load_params reads,
and ends with demo_report.json: per-language held-out accuracy, tokens/char gain, and a verified HF export."""

import pytest
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from xllava_jax.models import LlamaConfig, LlavaConfig
from xllava_jax.tokenizer.spm import load_tokenizer
from xllava_jax.checkpoint import load_params

REPO = Path(__file__).parents[1]


@pytest.mark.slow
def test_demo_stage_list_runs(tmp_path, demo_data_root, train_subprocess_env):
    work = tmp_path / "demo"
    steps = [f"--config.{s}.train.num_steps=4" for s in ("base", "stage0", "stage1", "stage2")]
    cmd = [sys.executable, "-m", "xllava_jax.main", "--config", str(REPO / "configs/demo.py"), "--workdir", str(work),
           f"--config.base.data.root={demo_data_root}", *steps, "--config.stage2.train.batch_size=8",
           "--config.stage2.eval.every_steps=2", "--config.stage2.eval.num_batches=1",
           "--config.stage2.log.every_steps=2", "--config.stage2.log.peak_tflops=1.0",
           "--config.stage2.train.consistency_weight=0.1"]
    out = subprocess.run(cmd, env=train_subprocess_env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout[out.stdout.index("\n{") + 1:])
    assert [summary[s]["step"] for s in ("base", "stage0", "stage1", "stage2")] == [4, 4, 4, 4]
    rows = [json.loads(x) for x in (work / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("loss", "accuracy", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "step_time_s", "mfu",
                "consistency_loss", "eval_loss", "eval_accuracy", "eval_modality_gap", "eval_modality_cos"):
        assert np.isfinite(rows[-1][key]), key
    assert list((work / "stage2" / "tensorboard").glob("events.out.tfevents.*"))

    # base: an English decoder; stage0 grew it to the expanded tokenizer with the old rows kept
    english, expanded = load_tokenizer(demo_data_root / "tokenizer_en/tokenizer.model"), load_tokenizer(
        demo_data_root / "tokenizer")
    cfg_b, p_b = load_params(work / "base")
    cfg_0, p_0 = load_params(work / "stage0")
    assert isinstance(cfg_b, LlamaConfig) and isinstance(cfg_0, LlamaConfig)
    assert cfg_b.vocab_size < expanded.vocab_size <= cfg_0.vocab_size
    assert english.sp_vocab_size < expanded.sp_vocab_size
    cfg1, p1 = load_params(work / "stage1")
    cfg2, p2 = load_params(work / "stage2")
    assert isinstance(cfg2, LlavaConfig) and cfg1 == cfg2 and cfg2.image_token_id == expanded.image_token_id
    # stage 2 started from stage 1's params and keeps the vision tower frozen: bit for bit
    for a, b in zip(jax.tree_util.tree_leaves(p1["vision_tower"]), jax.tree_util.tree_leaves(p2["vision_tower"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    report = json.loads((work / "demo_report.json").read_text())
    assert set(report["accuracy"]) == {"en", "ko", "zh"}
    assert all(0.0 <= v <= 1.0 for v in report["accuracy"].values())
    assert 0 < report["chance"] < 1
    # (4 steps a stage read no image: tests/test_demo_guard.py runs the full demo and checks the accuracy)
    kinds = {"color", "position", "shape"}
    assert set(report["accuracy_by_kind"]) == set(report["text_only_baseline_by_kind"]) == kinds
    assert all(set(v) == kinds for v in report["accuracy_by_language_and_kind"].values())
    assert set(report["text_only_baseline"]) == {"en", "ko", "zh"}
    assert all(report["chance"] < v < 1 for v in report["text_only_baseline"].values())
    assert report["tokens_per_char"]["ko"]["after"] < report["tokens_per_char"]["ko"]["before"]
    assert report["tokens_per_char"]["zh"]["after"] < report["tokens_per_char"]["zh"]["before"]
    export = report["export"]
    assert export["reimport_max_abs_diff"] == 0.0  # same program, same inputs, round-tripped params: bit for bit
    assert export["transformers_max_abs_diff"] < 1e-4 * max(1.0, export["max_abs_logit"])
    assert (work / "hf" / "config.json").exists() and (work / "hf" / "tokenizer.model").exists()
    assert set(report["seconds"]) >= {"assets", "base", "stage0", "stage1", "stage2", "eval", "export"}
    assert "accuracy" in out.stdout and "chance" in out.stdout and "text-only" in out.stdout
