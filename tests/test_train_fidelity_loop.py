"""The stage loop reads the non-finite streak one step behind (no per-step wait for the device) and keeps its
guarantee: K non-finite steps in a row stop the run at the step they happened, and no checkpoint is written at
or after it (the last good one stays the latest)."""

import pytest

from train_helpers import demo_stage_config
from xllava_jax.train.hooks import NonFiniteError
from xllava_jax.train.loop import run_stage


@pytest.mark.slow
def test_nonfinite_streak_stops_the_run_at_its_step(tmp_path, demo_data_root):
    c = demo_stage_config(1, str(demo_data_root), steps=8)
    c.optim.update(lr=1e30, warmup_ratio=0.0, clip_norm=0.0)  # step 1 blows the params up; 2, 3 are non-finite
    c.train.max_nonfinite = 2
    c.init.source = "random"
    c.checkpoint.update(every_steps=2, async_save=False)  # step 2 saves (streak read exactly), 3 is read behind
    with pytest.raises(NonFiniteError, match="2 non-finite steps in a row at step 3 "):
        run_stage(c, tmp_path)
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [2], saved


def test_sigterm_is_agreed_on_only_at_check_steps(monkeypatch):
    """Several processes: the SIGTERM collective runs only where asked (the same steps everywhere), and then
    any process's flag stops all."""
    from jax.experimental import multihost_utils

    from xllava_jax.train import loop
    calls = []
    monkeypatch.setattr(loop.jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: calls.append(x) or [x, 1])
    p = loop.Preempted()
    assert p.anywhere(False) is False and not calls
    assert p.anywhere(True) is True and len(calls) == 1  # the other process was signalled
