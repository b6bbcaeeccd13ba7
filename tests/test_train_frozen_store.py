"""Frozen groups: held in `model.frozen_dtype` on the devices, written once per stage to <workdir>/frozen at the
precision they were loaded in, left out of every step checkpoint, and merged back by load_params."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from xllava_jax.checkpoint import load_params, read_record, save_params
from xllava_jax.models.params import init_params
from xllava_jax.sharding import make_mesh
from xllava_jax.tokenizer.spm import load_tokenizer
from xllava_jax.train.harness import stage_harness
from xllava_jax.train.initialize import initial_model, random_config
from xllava_jax.train.loop import run_stage
from train_helpers import demo_stage_config


def saved_groups(step_dir) -> set[str]:
    """Top-level keys of a step directory's `params` item, from Orbax's metadata (nothing restored)."""
    meta = ocp.StandardCheckpointer().metadata(step_dir / "params")
    tree = getattr(meta, "item_metadata", meta)
    return set(getattr(tree, "tree", tree))


def files_and_mtimes(root) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def stage1(tmp_path, demo_data_root):
    """A demo stage-1 config (CLIP + projector trained, LLM frozen in bf16) starting from an fp32 checkpoint whose
    values bf16 cannot hold, and that checkpoint's params."""
    c = demo_stage_config(1, str(demo_data_root), steps=4)
    c.init.update(source="checkpoint", checkpoint=str(tmp_path / "source"))
    c.model.frozen_dtype = "bfloat16"
    c.checkpoint.update(every_steps=2, keep=3, async_save=False)
    cfg = random_config(c, load_tokenizer(c.tokenizer))
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(3)))
    save_params(tmp_path / "source", params, cfg)
    return c, params


@pytest.mark.slow
def test_frozen_groups_held_in_frozen_dtype(stage1):
    c, _ = stage1
    cfg, params = initial_model(c, load_tokenizer(c.tokenizer))
    state = stage_harness(c, cfg, 4, make_mesh(1, 1, 1)).init_state(params)
    assert sorted(state.frozen) == ["language_model"]
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.frozen)} == {np.dtype("bfloat16")}
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.params)} == {np.dtype("float32")}
    c.model.frozen_dtype = ""
    state = stage_harness(c, cfg, 4, make_mesh(1, 1, 1)).init_state(params)
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.frozen)} == {np.dtype("float32")}


@pytest.mark.slow
def test_frozen_store_written_once_at_load_precision(stage1, tmp_path):
    c, source = stage1
    workdir = tmp_path / "run"
    assert run_stage(c, workdir)["step"] == 4
    store = workdir / "frozen"
    written = files_and_mtimes(store)
    assert written and saved_groups(store) == {"language_model"}
    for step in (2, 4):
        step_dir = workdir / "checkpoints" / str(step)
        assert saved_groups(step_dir) == {"vision_tower", "projector"}  # no copy of the frozen LLM
        assert read_record(step_dir).frozen_groups == ("language_model",)

    cfg, params = load_params(workdir)
    assert sorted(params) == ["language_model", "projector", "vision_tower"]
    for got, want in zip(jax.tree_util.tree_leaves(params["language_model"]),
                         jax.tree_util.tree_leaves(source["language_model"])):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)  # the source's fp32 values, not their bf16 rounding
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params["projector"]),
                                                      jax.tree_util.tree_leaves(source["projector"]))]
    assert any(moved)

    c.train.num_steps = 6  # resume from step 4: the store is read, never rewritten
    assert run_stage(c, workdir)["step"] == 6
    assert files_and_mtimes(store) == written
    assert saved_groups(workdir / "checkpoints" / "6") == {"vision_tower", "projector"}


@pytest.mark.slow
def test_step_without_its_store_names_what_is_missing(stage1, tmp_path):
    c, _ = stage1
    c.train.num_steps = 2
    workdir = tmp_path / "run"
    run_stage(c, workdir)
    (workdir / "frozen").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=r"frozen groups \['language_model'\].*copy the workdir's 'frozen'"):
        load_params(workdir / "checkpoints" / "2")


@pytest.mark.slow
def test_bf16_storage_of_frozen_groups_changes_nothing_under_bf16_compute():
    """What docs/training.md promises: every use of a weight casts it to the compute dtype first, so a frozen tower
    held in bf16 gives bit-identical outputs to one held in fp32 when the compute dtype is bf16."""
    from xllava_jax.models.params import build_model
    from xllava_jax.train import trainable
    from xllava_jax.train.forward import forward
    from train_helpers import tiny_batch, tiny_cfg

    cfg = tiny_cfg(dtype="bfloat16")
    model, batch = build_model(cfg), tiny_batch(cfg)
    params = init_params(cfg, jax.random.PRNGKey(0))
    t, f = trainable.split(params, ("projector",), True)
    stored = trainable.merge(t, trainable.with_dtype(f, "bfloat16"), True)
    for a, b in zip(forward(model, params, batch, True), forward(model, stored, batch, True)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.slow
def test_workdir_from_before_the_store_resumes_and_gains_one(stage1, tmp_path):
    """A step directory holding every group in `params` and no `frozen_groups` (what earlier versions wrote)
    resumes; the run then writes the store its new steps refer to."""
    import json
    import shutil

    c, _ = stage1
    c.train.num_steps = 2
    workdir = tmp_path / "run"
    run_stage(c, workdir)
    step = workdir / "checkpoints" / "2"
    cfg, full = load_params(step)
    save_params(tmp_path / "full", full, cfg)
    shutil.rmtree(step / "params")
    shutil.copytree(tmp_path / "full" / "params", step / "params")
    meta = step / "train_state" / "metadata"
    state = json.loads(meta.read_text())
    del state["frozen_groups"]
    meta.write_text(json.dumps(state))
    shutil.rmtree(workdir / "frozen")
    assert saved_groups(step) == {"vision_tower", "projector", "language_model"}

    c.train.num_steps = 4
    assert run_stage(c, workdir)["step"] == 4
    assert saved_groups(workdir / "frozen") == {"language_model"}
    _, params = load_params(workdir)
    for got, want in zip(jax.tree_util.tree_leaves(params["language_model"]),
                         jax.tree_util.tree_leaves(full["language_model"])):
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=1e-3)  # held in bf16
