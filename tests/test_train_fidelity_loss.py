"""The training loss equals transformers' own loss on the same weights and batch (not only itself):
stage 2 against LlavaForConditionalGeneration(labels=...), stage 0 (packed rows) against LlamaForCausalLM;
and metrics.step_flops against the standard FLOP count done by hand."""

import functools

import jax
import numpy as np
import pytest
import torch

import hf_reference as ref
from xllava_jax.convert import hf as convert
from xllava_jax.data.labels import IGNORE_INDEX
from xllava_jax.models import CLIPVisionConfig, LlamaConfig, LlavaConfig
from xllava_jax.sharding import make_mesh
from xllava_jax.train.defaults import base_config
from xllava_jax.train.harness import make_harness
from xllava_jax.train.metrics import step_flops

LOSS_TOLERANCE = 2e-5  # relative, float32


@functools.lru_cache(maxsize=None)
def step_loss(cfg, groups: tuple[str, ...]):
    """(params, batch) -> the train step's reported loss (computed before the update)."""
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    h = make_harness(cfg, groups, base_config().optim, 10, mesh)

    def run(params, batch):
        _, metrics = h.jit_step(batch)(h.init_state(params), batch)
        return float(jax.device_get(metrics["loss"]))
    return run


def llava_batch():
    """Rows 0 and 2 hold an image, row 1 is text-only, row 2 is right-padded; -100 spans in every row."""
    n = (ref.VISION["image_size"] // ref.VISION["patch_size"]) ** 2
    ids, mask = ref.image_batch(n, seed=3)
    labels = ids.copy()
    labels[0, :2 + n + 3] = IGNORE_INDEX  # prompt and image
    labels[1, :4] = IGNORE_INDEX
    labels[1, 8:10] = IGNORE_INDEX  # a second turn's question
    labels[2, :1 + n + 2] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    return ids, mask, labels, ref.images_nhwc(2, ref.VISION["image_size"], seed=4)


@pytest.mark.slow
def test_stage2_loss_matches_transformers_llava(tmp_path):
    hf = ref.llava(seed=5)
    hf.save_pretrained(tmp_path)
    model, params = convert.load_hf_llava(tmp_path)
    ids, mask, labels, pixels = llava_batch()
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                  pixel_values=ref.to_nchw(pixels), labels=torch.from_numpy(labels)).loss.item()
    slots = np.zeros((3, 1, *pixels.shape[1:]), np.float32)
    slots[0, 0], slots[2, 0] = pixels
    t = ids.shape[1]
    batch = {"input_ids": ids.astype(np.int32), "labels": labels.astype(np.int32),
             "attention_mask": mask.astype(np.int32), "positions": np.tile(np.arange(t, dtype=np.int32), (3, 1)),
             "segment_ids": mask.astype(np.int32), "pixel_values": slots}
    got = step_loss(model.cfg, ("projector", "language_model"))(params, batch)
    assert abs(got - want) / want < LOSS_TOLERANCE, (got, want)


@pytest.mark.slow
def test_stage0_packed_loss_matches_transformers_llama(tmp_path):
    hf = ref.llama(seed=6)
    hf.save_pretrained(tmp_path)
    model, params = convert.load_hf_llama(tmp_path)
    rng = np.random.default_rng(7)
    docs = [rng.integers(3, ref.TEXT["vocab_size"], size=n) for n in (7, 9, 13)]
    for d in docs:
        d[0] = 1  # <s>, untrained like encode_text_document's BOS
    # transformers: one document per row, right-padded
    t_hf = max(map(len, docs))
    ids = np.zeros((3, t_hf), np.int64)
    mask = np.zeros_like(ids)
    labels = np.full_like(ids, IGNORE_INDEX)
    for r, d in enumerate(docs):
        ids[r, :len(d)], mask[r, :len(d)], labels[r, 1:len(d)] = d, 1, d[1:]
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                  labels=torch.from_numpy(labels)).loss.item()
    # ours: documents 0 and 1 packed into row 0 (segments 1, 2), document 2 alone in row 1
    t = 20
    batch = {k: np.zeros((2, t), np.int32) for k in ("input_ids", "attention_mask", "positions", "segment_ids")}
    batch["labels"] = np.full((2, t), IGNORE_INDEX, np.int32)
    for r, row in enumerate([[docs[0], docs[1]], [docs[2]]]):
        at = 0
        for s, d in enumerate(row, 1):
            sl = slice(at, at + len(d))
            batch["input_ids"][r, sl], batch["attention_mask"][r, sl] = d, 1
            batch["positions"][r, sl], batch["segment_ids"][r, sl] = np.arange(len(d)), s
            batch["labels"][r, at + 1:at + len(d)] = d[1:]
            at += len(d)
    got = step_loss(model.cfg, ("language_model",))(params, batch)
    assert abs(got - want) / want < LOSS_TOLERANCE, (got, want)


def flops_cfg() -> LlavaConfig:
    """A small LLaVA whose FLOPs are easy to count by hand."""
    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                image_size=16, patch_size=8),
        text=LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2),
        image_token_id=120, pad_token_id=121)


def hand_counted_flops(stage: int, tokens: int, seq: int, images: int) -> float:
    """6·N·tokens for trained matmul params, 2·N forward-only, 4·N backward-through (activation grads only),
    plus attention 4·L·T·d per token forward (x3 trained, x2 backward-through); counted from the sizes above."""
    h, i, v, L, hd, nq, nkv = 32, 64, 128, 2, 8, 4, 2
    # N = non-embedding params (Kaplan et al.): q, k, v, o, MLP, 2 RMSNorms per layer, final norm, lm_head
    dec = L * (h * nq * hd + 2 * h * nkv * hd + nq * hd * h + 3 * h * i + 2 * h) + h + h * v
    dec_attn = 4 * L * seq * nq * hd
    vh, vi, vl, p = 16, 32, 2, 4  # vision width, MLP width, layers, patches (+ CLS = 5 positions)
    conv = 3 * 8 * 8 * vh  # patch embedding, no bias, on the P patches
    layer = 4 * (vh * vh + vh) + (vh * vi + vi) + (vi * vh + vh) + 4 * vh  # attn, mlp, 2 layernorms
    body = vl * layer + 2 * vh  # + pre_layrnorm, on P + 1 positions
    vis = images * (2 * conv * p + 2 * body * (p + 1) + 4 * vl * (p + 1) ** 2 * vh)
    proj = images * 2 * ((vh * h + h) + (h * h + h)) * p
    lm_fwd = tokens * (2 * dec + dec_attn)
    if stage == 1:  # projector trained (x3), decoder backward-through (x2), vision forward only
        return 2 * lm_fwd + vis + 3 * proj
    return 3 * lm_fwd + vis + 3 * proj  # stage 2: projector + decoder trained


@pytest.mark.parametrize("stage,groups", [(1, ("projector",)), (2, ("projector", "language_model"))])
def test_step_flops_match_hand_count(stage, groups):
    tokens, seq, images = 4 * 64, 64, 3
    got = step_flops(flops_cfg(), groups, tokens, seq, images)
    want = hand_counted_flops(stage, tokens, seq, images)
    assert got == pytest.approx(want, rel=1e-12), (got, want)
