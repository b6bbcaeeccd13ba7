"""The train step: row-local forward equals the model, frozen groups stay bit-identical, the loss falls,
gradient accumulation equals one big batch, non-finite steps are skipped, stage 1 needs less memory."""

import pytest
import functools

import jax
import numpy as np

from train_helpers import tiny_batch, tiny_cfg
from xllava_jax.models import build_model, init_params
from xllava_jax.train.defaults import base_config
from xllava_jax.train.forward import forward, row_slots
from xllava_jax.train.harness import make_harness
from xllava_jax.sharding import make_mesh
from xllava_jax.train.state import abstract_state

CFG = tiny_cfg()
PARAMS = jax.tree_util.tree_map(np.asarray, init_params(CFG, jax.random.PRNGKey(0)))
STAGE1, STAGE2 = ("projector",), ("projector", "language_model")


def optim(lr=1e-2):
    o = base_config().optim
    o.update(lr=lr, warmup_ratio=0.0)
    return o


@functools.lru_cache(maxsize=None)
def harness(groups, accum=1, weight=0.0):
    """One compiled step per setting, shared by the tests (XLA compiles dominate CPU test time)."""
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    h = make_harness(CFG, groups, optim(), 30, mesh, grad_accum=accum, consistency_weight=weight)
    return h, h.jit_step(tiny_batch(CFG))


def run_steps(setting, batch, steps=1, params=PARAMS):
    h, step = harness(*setting)
    state = h.init_state(params)
    metrics = []
    for _ in range(steps):
        state, m = step(state, batch)
        metrics.append(jax.device_get(m))
    return jax.device_get(h.params(state)), metrics


def leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


@pytest.mark.slow
def test_row_local_forward_equals_model_call():
    batch = tiny_batch(CFG, rows=4)
    out = forward(build_model(CFG), PARAMS, batch, True)
    # the model's own layout: images in reading order over the batch, trailing slots unused
    ordered = np.concatenate([batch["pixel_values"][r] for r in (0, 2)] + [np.zeros_like(batch["pixel_values"][0])] * 2)
    want = build_model(CFG).apply({"params": PARAMS}, batch["input_ids"], pixel_values=ordered,
                                  attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].astype(bool)  # padded positions attend to nothing with segment ids
    np.testing.assert_allclose(np.asarray(out.logits)[real], np.asarray(want)[real], atol=1e-5, rtol=1e-5)
    slots = row_slots(batch["input_ids"], ordered, CFG.image_token_id, CFG.num_image_tokens, 1)
    np.testing.assert_array_equal(slots, batch["pixel_values"])


@pytest.mark.slow
def test_stage1_step_changes_only_the_projector():
    new, m = run_steps((STAGE1,), tiny_batch(CFG))
    assert m[0]["finite"] and np.isfinite(m[0]["loss"])
    for (path, a), (_, b) in zip(leaves(PARAMS), leaves(new)):
        if path[0].key == "projector":
            assert not np.array_equal(a, b), path
        else:
            np.testing.assert_array_equal(a, b, err_msg=str(path))


@pytest.mark.slow
def test_stage2_step_keeps_vision_bit_identical_and_trains_llm():
    new, _ = run_steps((STAGE2,), tiny_batch(CFG))
    for (path, a), (_, b) in zip(leaves(PARAMS), leaves(new)):
        if path[0].key == "vision_tower":
            np.testing.assert_array_equal(a, b, err_msg=str(path))
    assert not np.array_equal(PARAMS["language_model"]["lm_head"]["kernel"], new["language_model"]["lm_head"]["kernel"])


@pytest.mark.slow
def test_loss_falls_on_a_tiny_overfit_set():
    _, metrics = run_steps((STAGE2,), tiny_batch(CFG, seed=1), steps=30)
    losses = [float(m["loss"]) for m in metrics]
    assert losses[-1] < 0.3 * losses[0], losses
    assert float(metrics[-1]["accuracy"]) > 0.8


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch():
    batch = tiny_batch(CFG)
    one, m1 = run_steps((STAGE2,), batch)
    four, m4 = run_steps((STAGE2, 4), batch)
    assert abs(float(m1[0]["loss"]) - float(m4[0]["loss"])) < 1e-5
    assert abs(float(m1[0]["grad_norm"]) - float(m4[0]["grad_norm"])) < 1e-4 * float(m1[0]["grad_norm"])
    for (path, a), (_, b) in zip(leaves(one), leaves(four)):
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=str(path))


@pytest.mark.slow
def test_consistency_loss_is_reported_and_trains_the_projector():
    batch = tiny_batch(CFG)
    without, m0 = run_steps((STAGE1,), batch)
    with_cons, m = run_steps((STAGE1, 1, 0.5), batch)
    cons = float(m[0]["consistency_loss"])
    assert 0.0 < cons < 2.0
    assert abs(float(m[0]["loss"]) - (float(m0[0]["loss"]) + 0.5 * cons)) < 1e-5
    # the projector moved, and the consistency term's gradient reached it: its update differs from the step
    # without the term by more than round-off; the frozen vision tower and LLM stay bit for bit
    for (path, a), (_, b), (_, c) in zip(leaves(PARAMS), leaves(with_cons), leaves(without)):
        if path[0].key == "projector":
            assert not np.array_equal(a, b), path
            moved = np.abs(np.asarray(b, np.float64) - a).max()
            assert np.abs(np.asarray(b, np.float64) - c).max() > 1e-3 * moved, path
        else:
            np.testing.assert_array_equal(a, b, err_msg=str(path))


@pytest.mark.slow
def test_nonfinite_step_is_skipped_and_counted():
    bad = jax.tree_util.tree_map(np.copy, PARAMS)
    bad["language_model"]["norm"]["scale"][:] = np.nan  # frozen in stage 1: every step's loss is NaN
    h, step = harness(STAGE1)
    state = h.init_state(bad)
    before = jax.device_get(state.params)
    for k in range(3):
        state, m = step(state, tiny_batch(CFG))
        assert not m["finite"] and int(m["nonfinite_streak"]) == k + 1
    for (path, a), (_, b) in zip(leaves(before), leaves(jax.device_get(state.params))):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    assert int(state.step) == 3 and int(state.nonfinite_total) == 3


def compiled_memory(groups):
    h, step = harness(groups)
    state = abstract_state(CFG, h.groups, h.tx, h.shardings)
    return step.lower(state, tiny_batch(CFG)).compile().memory_analysis()


def test_stage1_needs_less_memory_than_stage2():
    m1, m2 = compiled_memory(STAGE1), compiled_memory(STAGE2)
    # frozen params have no optimizer moments (arguments) and no weight gradients (temporaries)
    assert m1.argument_size_in_bytes < m2.argument_size_in_bytes
    assert m1.temp_size_in_bytes < m2.temp_size_in_bytes
