"""Logits processing equals transformers' processors; streamed text and stop strings."""

import numpy as np
import pytest
import torch
import transformers

from xllava_jax.infer import sampling
from xllava_jax.infer.streaming import TextStream, find_stop, held_back


def random_logits(seed=0, shape=(4, 50)):
    return np.random.default_rng(seed).normal(scale=3.0, size=shape).astype(np.float32)


def hf_process(logits, ids, cfg):
    """transformers' processors in generate's order."""
    procs = [transformers.RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty),
             transformers.TemperatureLogitsWarper(cfg.temperature)]
    if cfg.top_k:
        procs.append(transformers.TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1:
        procs.append(transformers.TopPLogitsWarper(cfg.top_p))
    scores = torch.from_numpy(logits.copy())
    for proc in procs:
        scores = proc(torch.from_numpy(ids), scores)
    return scores.numpy()


@pytest.mark.parametrize("cfg", [
    sampling.SamplingConfig(temperature=0.7, top_k=5),
    sampling.SamplingConfig(temperature=1.3, top_p=0.8),
    sampling.SamplingConfig(temperature=1.0, top_k=10, top_p=0.5, repetition_penalty=1.4),
    sampling.SamplingConfig(temperature=0.5, top_p=0.999, repetition_penalty=0.8),
])
def test_processed_logits_equal_transformers(cfg):
    logits = random_logits()
    ids = np.random.default_rng(1).integers(0, logits.shape[1], size=(4, 7))
    seen = np.zeros(logits.shape, bool)
    seen[np.arange(4)[:, None], ids] = True
    got = np.asarray(sampling.process_logits(logits, seen, cfg))
    want = hf_process(logits, ids, cfg)
    assert (np.isinf(got) == np.isinf(want)).all()
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6)


def test_greedy_is_argmax_after_repetition_penalty():
    import jax
    logits = random_logits(2)
    seen = np.zeros(logits.shape, bool)
    top = logits.argmax(-1)
    seen[np.arange(4), top] = True
    cfg = sampling.SamplingConfig(repetition_penalty=1e6)
    chosen = np.asarray(sampling.choose_tokens(logits, jax.random.PRNGKey(0), seen, cfg))
    assert (chosen != top).all() and (chosen == np.where(seen, -np.inf, logits).argmax(-1)).all()


def test_sampled_frequencies_follow_the_nucleus():
    import jax
    logits = np.log(np.asarray([[0.5, 0.3, 0.15, 0.05]], np.float32))
    cfg = sampling.SamplingConfig(temperature=1.0, top_p=0.7)
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: sampling.choose_tokens(logits, k, None, cfg))(keys))[:, 0]
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert freq[2] == freq[3] == 0 and abs(freq[0] - 0.625) < 0.03


def test_bad_sampling_settings_are_named():
    with pytest.raises(ValueError, match="top_p=1.5"):
        sampling.SamplingConfig(top_p=1.5).validate()
    with pytest.raises(ValueError, match="temperature=-1"):
        sampling.SamplingConfig(temperature=-1).validate()


class CharTokenizer:
    """Ids are code points (enough to exercise streaming and stop strings)."""

    def decode(self, ids, skip_special=False):
        return "".join(chr(i) for i in ids)


def test_stop_strings_cut_text_and_partial_prefixes_are_held_back():
    stream = TextStream(CharTokenizer(), stop_strings=["USER:", "###"])
    ids = [ord(c) for c in "Hi there.\nUSER: more"]
    deltas = [stream.update(ids[:n]) for n in range(1, len(ids) + 1)]
    assert "".join(deltas) == "Hi there.\n" and stream.stopped and stream.text == "Hi there.\n"
    assert deltas[ids.index(ord("U"))] == ""  # "U" could start "USER:", so it waits
    assert find_stop("a###b", ["###"]) == 1 and held_back("abc#", ["###"]) == 1


def test_unfinished_characters_are_held_back(spm_model_path):
    from xllava_jax.tokenizer.spm import load_tokenizer
    tok = load_tokenizer(spm_model_path)
    ids = tok.encode_plain("고양이 猫 🐱")  # the emoji is byte-fallback pieces
    stream = TextStream(tok)
    deltas = [stream.update(ids[:n]) for n in range(1, len(ids) + 1)]
    assert all("\ufffd" not in d for d in deltas[:-1])
    assert "".join(deltas) + stream.update(ids, final=True) == tok.decode(ids)
