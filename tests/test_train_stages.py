"""Stage 0 on packed text with a vocabulary grown to the (expanded) tokenizer, then stage 1 from that
decoder (a LLaVA composed around it) on the LRM-LLaVA MVQA task mix."""

import pytest
import jax
import numpy as np

from xllava_jax.models import LlamaConfig, LlavaConfig, init_params
from xllava_jax.tokenizer.spm import load_tokenizer
from xllava_jax.checkpoint import load_params, save_params
from xllava_jax.train.defaults import base_config, tiny_model
from xllava_jax.train.loop import run_stage


@pytest.mark.slow
def test_stage0_grows_vocab_then_stage1_lrm_mix(tmp_path, demo_data_root):
    tok = load_tokenizer(demo_data_root / "tokenizer")
    small = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)
    base = init_params(small, jax.random.PRNGKey(0))
    save_params(tmp_path / "base", base, small)

    c0 = tiny_model(base_config(0))
    c0.model.kind = "llama"
    c0.init.update(source="checkpoint", checkpoint=str(tmp_path / "base"))
    c0.tokenizer = str(demo_data_root / "tokenizer")
    c0.data.update(format="text", files=("text_en.txt", "text_ko.txt"), weights=(1.0, 1.0), root=str(demo_data_root),
                   pack=True, max_len=64)
    c0.train.update(batch_size=4, num_steps=2)
    c0.log.update(every_steps=1, progress=False, tensorboard=False)
    r0 = run_stage(c0, tmp_path / "s0")
    assert r0["step"] == 2 and np.isfinite(r0["metrics"]["loss"])
    cfg0, p0 = load_params(tmp_path / "s0")
    grown = -(-tok.vocab_size // 64) * 64  # padded to a multiple of 64
    assert isinstance(cfg0, LlamaConfig) and cfg0.vocab_size == grown > 512
    rows = np.asarray(p0["embed_tokens"]["embedding"])
    assert rows.shape == (grown, 64)
    mean = np.asarray(base["embed_tokens"]["embedding"]).mean(axis=0)
    np.testing.assert_allclose(rows[tok.vocab_size:], np.broadcast_to(mean, rows[tok.vocab_size:].shape), atol=1e-6)
    # (new rows start at the old rows' mean; ids no text uses get no gradient and stay there)

    c1 = tiny_model(base_config(1))
    c1.init.update(source="checkpoint", checkpoint=str(tmp_path / "s0"))
    c1.tokenizer = c0.tokenizer
    c1.data.update(root=str(demo_data_root), template="vicuna_v1", max_len=112)
    c1.data.task_mix.update(files=("qa.jsonl",), tasks="mvqa")
    c1.train.update(batch_size=4, num_steps=2)
    c1.log.update(every_steps=1, progress=False, tensorboard=False)
    r1 = run_stage(c1, tmp_path / "s1")
    assert r1["step"] == 2 and np.isfinite(r1["metrics"]["loss"])
    cfg1, p1 = load_params(tmp_path / "s1")
    assert isinstance(cfg1, LlavaConfig) and cfg1.image_token_id == tok.image_token_id
    np.testing.assert_array_equal(p1["language_model"]["embed_tokens"]["embedding"], p0["embed_tokens"]["embedding"])
