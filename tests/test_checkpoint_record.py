"""The record of how a checkpoint was trained (checkpoint.TrainRecord): written by the stage loop with the
tokenizer files, read by inference, the data CLI and export; checkpoints written before the record still load."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from xllava_jax.checkpoint import MODEL_CONFIG, PARAMS, TRAIN_STATE, TrainRecord, read_record, save_params
from xllava_jax.models.params import config_to_dict, init_params
from train_helpers import demo_stage_config, tiny_cfg


@pytest.fixture(scope="module")
def plain_stage1(tmp_path_factory, demo_data_root):
    """A 2-step demo stage-1 run (template plain) from random weights: its workdir."""
    from xllava_jax.train.loop import run_stage
    c = demo_stage_config(1, str(demo_data_root), steps=2)
    c.init.source = "random"
    c.checkpoint.update(every_steps=2, async_save=False)
    workdir = tmp_path_factory.mktemp("plain_stage1")
    run_stage(c, workdir)
    return workdir


@pytest.mark.slow
def test_checkpoint_carries_its_tokenizer(plain_stage1, demo_data_root):
    from xllava_jax.data.cli import model_settings
    from xllava_jax.infer.loading import load_tokenizer_for
    from xllava_jax.tokenizer.spm import load_tokenizer

    step = plain_stage1 / "checkpoints" / "2"
    record = read_record(plain_stage1)
    assert record.step == 2 and record.stage == 1 and record.template == "plain"
    assert "tokenizer.model" in record.tokenizer_files
    for name in record.tokenizer_files:
        assert (step / "tokenizer" / name).read_bytes() == (demo_data_root / "tokenizer" / name).read_bytes()
    want = load_tokenizer(demo_data_root / "tokenizer")
    got = load_tokenizer_for(plain_stage1)  # no --tokenizer
    text = "a red circle 빨간 원 红色圆"
    assert got.encode(text) == want.encode(text) and got.vocab_size == want.vocab_size
    assert got.image_token_id == want.image_token_id
    settings = model_settings(str(plain_stage1))
    assert settings["template"] == "plain" and settings["tokenizer"] == str(step / "tokenizer")


@pytest.mark.slow
def test_export_defaults_to_the_trained_template_and_tokenizer(plain_stage1, tmp_path):
    from xllava_jax.convert.__main__ import main
    from xllava_jax.data.chat_template import chat_template

    out = tmp_path / "hf"
    assert main(["orbax-to-hf", "--checkpoint", str(plain_stage1), "--out", str(out)]) == 0  # no flags
    assert (out / "chat_template.jinja").read_text() == chat_template("plain") != chat_template("vicuna_v1")
    assert (out / "tokenizer.model").is_file()


@pytest.mark.slow
def test_checkpoint_written_before_the_record_still_loads(tmp_path):
    """A step whose train_state is the untyped dict of earlier versions (no tokenizer_files, a key this version
    dropped), and a checkpoint without any train_state."""
    from xllava_jax.checkpoint import load_params

    cfg = tiny_cfg()
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(0)))
    step = tmp_path / "work" / "checkpoints" / "3"
    old = {"step": 3, "nonfinite_streak": 0, "frozen_groups": [], "nonfinite_total": 1, "stage": 2,
           "total_steps": 9, "template": "vicuna_v1", "instruction": None, "retired_key": 1}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as c:
        c.save(step.absolute(), args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(params), MODEL_CONFIG: ocp.args.JsonSave(config_to_dict(cfg)),
            TRAIN_STATE: ocp.args.JsonSave(old)}))
    assert read_record(tmp_path / "work") == TrainRecord(step=3, total_steps=9, stage=2, template="vicuna_v1",
                                                          nonfinite_total=1)
    got_cfg, got = load_params(tmp_path / "work")
    assert got_cfg == cfg
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)
    save_params(tmp_path / "converted", params, cfg)
    assert read_record(tmp_path / "converted") == TrainRecord()
    with pytest.raises(FileNotFoundError):
        read_record(tmp_path / "nothing")


def test_lazy_params_read_each_param_alone(plain_stage1):
    """An export's params (checkpoint.lazy_params): each leaf, trained or frozen, read alone, equals the whole
    restore; a cast stays lazy and casts when read."""
    from xllava_jax.checkpoint import LazyParam, lazy_params, load_params

    cfg, lazy = lazy_params(plain_stage1)
    want_cfg, want = load_params(plain_stage1, to_host=True)
    assert cfg == want_cfg and read_record(plain_stage1).frozen_groups  # frozen groups come from the store
    pairs = list(zip(jax.tree_util.tree_leaves(lazy), jax.tree_util.tree_leaves(want)))
    assert pairs and all(isinstance(a, LazyParam) for a, _ in pairs)
    for a, b in pairs:
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), b)
    half = pairs[0][0].astype(np.float16)
    assert isinstance(half, LazyParam) and np.asarray(half).dtype == np.float16
    np.testing.assert_array_equal(np.asarray(half), pairs[0][1].astype(np.float16))


def test_pending_params_are_made_written_and_released_one_at_a_time(tmp_path):
    """save_params of PendingArray leaves (hf-to-orbax's streaming save): each is made only after every earlier
    one is gone, and the checkpoint restores to the same params as a save of the arrays themselves."""
    import gc
    import weakref

    import jax.numpy as jnp
    from xllava_jax.checkpoint import PendingArray, load_params

    cfg = tiny_cfg()
    params = init_params(cfg, jax.random.PRNGKey(3))
    made, most = [], [0]

    def pending(x):
        def make():
            gc.collect()
            most[0] = max(most[0], sum(ref() is not None for ref in made))
            array = jnp.array(x)
            made.append(weakref.ref(array))
            return array
        return PendingArray(x.shape, x.dtype, make)

    save_params(tmp_path / "pending", jax.tree_util.tree_map(pending, params), cfg)
    save_params(tmp_path / "arrays", params, cfg)
    assert most[0] == 0
    _, got = load_params(tmp_path / "pending")
    _, want = load_params(tmp_path / "arrays")
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
