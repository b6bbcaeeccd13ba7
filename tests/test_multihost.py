"""Multi-host on localhost with CPU collectives (gloo): 2 processes x 4 devices train the demo's stage 1 with the
same losses and params as 1 process x 8 devices; one process killed mid-run stops the job (launch/local.py),
and restarting both resumes from the last checkpoint (per-process data-iterator states) to the same end."""

import pytest
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from train_helpers import losses
from xllava_jax.checkpoint import load_params

REPO = Path(__file__).parents[1]
STEPS = 8


def main_args(workdir: Path, root: Path) -> list[str]:
    return ["--config", str(REPO / "configs/demo.py") + ":stage1", "--workdir", str(workdir),
            f"--config.data.root={root}", "--config.init.source=random", f"--config.train.num_steps={STEPS}",
            "--config.train.batch_size=8", "--config.mesh.data=2", "--config.mesh.fsdp=4",
            "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=2", "--config.log.every_steps=1",
            "--config.log.progress=False", "--config.log.tensorboard=False"]


def local_launch(workdir: Path, root: Path) -> list[str]:
    return [sys.executable, str(REPO / "launch/local.py"), "--num_processes", "2", "--devices_per_process", "4",
            "--log_dir", str(workdir.parent / f"{workdir.name}_logs"), "--", *main_args(workdir, root)]


def pid_of(workdir: Path, process_id: int) -> int | None:
    """Pid of the training process of `workdir` with --process_id=process_id (read from /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(workdir).encode() in cmd and f"--process_id={process_id}".encode() in cmd:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_after_a_kill(tmp_path, demo_data_root, train_subprocess_env):
    env = dict(train_subprocess_env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    single, multi = tmp_path / "single", tmp_path / "multi"
    one = subprocess.run([sys.executable, "-m", "xllava_jax.main", *main_args(single, demo_data_root)], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    env.pop("XLA_FLAGS")
    job = subprocess.Popen(local_launch(multi, demo_data_root), env=env, cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    while not (multi / "checkpoints" / "4").is_dir() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim = pid_of(multi, 1)
    assert job.poll() is None and victim, job.stdout.read()[-3000:] if job.poll() is not None else "no process 1"
    os.kill(victim, signal.SIGKILL)
    assert job.wait(timeout=120) != 0  # the launcher stops the survivor and reports the failure
    assert pid_of(multi, 0) is None and max(losses(multi)) < STEPS

    resumed = subprocess.run(local_launch(multi, demo_data_root), env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    want, got = losses(single), losses(multi)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5)
    cfg_a, params_a = load_params(single)
    cfg_b, params_b = load_params(multi)
    assert cfg_a == cfg_b
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(params_a),
                                 jax.tree_util.tree_leaves_with_path(params_b)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6, err_msg=str(path))
