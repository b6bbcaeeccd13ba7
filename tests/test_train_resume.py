"""Kill and resume: a run SIGKILLed mid-way (a partial checkpoint left behind), resumed, then stopped by
SIGTERM (which saves) and resumed again, ends with the same losses and bit-identical params as an
uninterrupted run."""

import pytest
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from xllava_jax.checkpoint import load_params
from train_helpers import losses

STEPS = 40
REPO = Path(__file__).parents[1]


def command(workdir: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "xllava_jax.main", "--config", str(REPO / "configs/demo.py") + ":stage1",
            "--workdir", str(workdir), f"--config.data.root={root}", f"--config.tokenizer={root}/tokenizer",
            f"--config.train.num_steps={STEPS}", "--config.train.batch_size=8", "--config.checkpoint.every_steps=2",
            "--config.checkpoint.keep=2", "--config.log.every_steps=1", "--config.log.progress=False",
            "--config.init.source=random"]


def start_and_signal(cmd: list[str], env: dict, ckpt: Path, sig: int) -> subprocess.Popen:
    """Start a run, wait until checkpoint `ckpt` is complete, send `sig`, wait for the process."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not ckpt.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"run ended before checkpoint {ckpt.name}:\n{proc.stdout.read()[-3000:]}"
    proc.send_signal(sig)
    proc.wait(timeout=240)
    return proc


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, demo_data_root, train_subprocess_env):
    env = train_subprocess_env
    full, broken = tmp_path / "full", tmp_path / "broken"
    done = subprocess.run(command(full, demo_data_root), env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = start_and_signal(command(broken, demo_data_root), env, broken / "checkpoints/6", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert max(losses(broken)) < STEPS
    partial = broken / "checkpoints" / "1000.orbax-checkpoint-tmp-1"  # a save cut short: must be ignored
    (partial / "params").mkdir(parents=True)

    termed = start_and_signal(command(broken, demo_data_root), env, broken / "checkpoints/20", signal.SIGTERM)
    assert termed.returncode == 0, termed.stdout.read()[-3000:]
    stopped_at = max(losses(broken))
    assert stopped_at < STEPS and (broken / "checkpoints" / str(stopped_at)).is_dir()  # SIGTERM saved its step
    assert not partial.exists()

    resumed = subprocess.run(command(broken, demo_data_root), env=env, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = losses(full), losses(broken)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    assert got == want
    cfg_a, params_a = load_params(full)
    cfg_b, params_b = load_params(broken)
    assert cfg_a == cfg_b
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(params_a),
                                 jax.tree_util.tree_leaves_with_path(params_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
