"""The cross-modal consistency loss and the modality gap against a NumPy reference written from their
definitions: a_i and t_i average content tokens only (no template text, no </s>), and by default the text side
is under stop_gradient, so the loss never moves the word embeddings."""

import pytest
import jax
import jax.numpy as jnp
import numpy as np

from train_helpers import tiny_batch, tiny_cfg
from xllava_jax.data.labels import content_mask, encode_conversation
from xllava_jax.data.templates import get_template
from xllava_jax.models import init_params
from xllava_jax.train import loss as losses
from xllava_jax.train import trainable
from xllava_jax.train.loop import modality_gap
from xllava_jax.train.step import make_loss_fn

CFG = tiny_cfg()
N = CFG.num_image_tokens
H = CFG.text.hidden_size


def batch_with_content(seed: int = 0) -> dict:
    """tiny_batch plus a content mask: template tokens (0, 1, 8) and the last real token (</s>) are not content."""
    batch = tiny_batch(CFG, rows=4, length=16, seed=seed)
    content = batch["attention_mask"].copy()
    content[:, [0, 1, 8]] = 0
    content[batch["input_ids"] == CFG.image_token_id] = 0
    last = batch["attention_mask"].sum(axis=1) - 1
    content[np.arange(4), last] = 0
    batch["content_mask"] = content
    return batch


def numpy_reference(embeds, features, batch):
    """(mean 1 - cos(v_i, a_i), modality gap, mean cos(v_i, t_i)) over the image rows, in float64."""
    e, f = np.asarray(embeds, np.float64), np.asarray(features, np.float64)
    cons, vs, ts, coss = [], [], [], []
    for r in range(e.shape[0]):
        if not (batch["input_ids"][r] == CFG.image_token_id).any():
            continue
        v = f[r, :N].mean(axis=0)
        answer = (batch["labels"][r] != -100) & (batch["content_mask"][r] > 0)
        a = e[r, answer].mean(axis=0)
        cons.append(1 - v @ a / np.linalg.norm(v) / np.linalg.norm(a))
        text = (batch["content_mask"][r] > 0) & (batch["attention_mask"][r] > 0)
        t = e[r, text].mean(axis=0)
        vs.append(v / np.linalg.norm(v))
        ts.append(t / np.linalg.norm(t))
        coss.append(v @ t / np.linalg.norm(v) / np.linalg.norm(t))
    return np.mean(cons), np.linalg.norm(np.mean(vs, 0) - np.mean(ts, 0)), np.mean(coss)


def test_consistency_and_gap_match_numpy_reference_on_content_tokens():
    batch = batch_with_content()
    rng = np.random.default_rng(1)
    embeds = rng.normal(size=(4, 16, H)).astype(np.float32)
    features = rng.normal(size=(4, N, H)).astype(np.float32) + 0.5
    sums = losses.consistency_sums(embeds, features, batch, CFG.image_token_id, N)
    gap = modality_gap(jax.device_get(losses.modality_sums(embeds, features, batch, CFG.image_token_id, N)))
    want_cons, want_gap, want_cos = numpy_reference(embeds, features, batch)
    assert float(sums["cons_images"]) == 2
    np.testing.assert_allclose(float(sums["cons"]) / 2, want_cons, rtol=1e-5)
    np.testing.assert_allclose(gap["modality_gap"], want_gap, rtol=1e-5)
    np.testing.assert_allclose(gap["modality_cos"], want_cos, rtol=1e-4, atol=1e-6)


def test_text_side_is_stop_gradient_unless_asked():
    batch = batch_with_content()
    rng = np.random.default_rng(2)
    embeds = rng.normal(size=(4, 16, H)).astype(np.float32)
    features = rng.normal(size=(4, N, H)).astype(np.float32)

    def cons(e, f, flow):
        return losses.consistency_sums(e, f, batch, CFG.image_token_id, N, text_grad=flow)["cons"]
    g_text, g_image = jax.grad(cons, argnums=(0, 1))(embeds, features, False)
    assert not np.any(np.asarray(g_text)) and np.any(np.asarray(g_image))
    assert np.any(np.asarray(jax.grad(cons)(embeds, features, True)))


@pytest.mark.slow
def test_consistency_loss_leaves_word_embedding_gradients_alone():
    params = jax.jit(lambda key: init_params(CFG, key))(jax.random.PRNGKey(0))
    t, f = trainable.split(params, ("projector", "language_model"), True)
    batch = {k: jnp.asarray(v) for k, v in batch_with_content().items()}
    n_tok = jnp.float32((np.asarray(batch["labels"])[:, 1:] != -100).sum())

    @jax.jit
    def grads(t):
        return [jax.grad(make_loss_fn(CFG, w, flow), has_aux=True)(t, f, batch, n_tok, jnp.float32(2))[0]
                for w, flow in ((0.0, False), (1.0, False), (1.0, True))]
    base, with_cons, flowing = grads(t)
    table = lambda g: np.asarray(g["language_model"]["embed_tokens"]["embedding"])  # noqa: E731
    np.testing.assert_allclose(table(with_cons), table(base), rtol=1e-6, atol=1e-9)
    assert not np.allclose(np.asarray(with_cons["projector"]["linear_2"]["bias"]),
                           np.asarray(base["projector"]["linear_2"]["bias"]))
    assert not np.allclose(table(flowing), table(base), rtol=1e-6, atol=1e-9)


def test_content_mask_excludes_template_and_eos(spm_model_path):
    from xllava_jax.tokenizer.spm import load_tokenizer
    tok = load_tokenizer(spm_model_path)
    turns = [("human", "<image>\nWhat is the cat doing?"), ("gpt", "It sleeps on a red sofa."),
             ("human", "Why?"), ("gpt", "It is tired.")]
    for name, want in (("vicuna_v1", "What is the cat doing? It sleeps on a red sofa. Why? It is tired."),
                       ("plain", "It sleeps on a red sofa.")):
        t = get_template(name)
        ids, _ = encode_conversation(tok, t, turns, 3)
        flags = content_mask(tok, t, turns, 3)
        assert len(flags) == len(ids)
        assert tok.decode([i for i, c in zip(ids, flags) if c]).strip() == want, name
        assert not any(c for i, c in zip(ids, flags) if i in (tok.bos_id, tok.eos_id, tok.image_token_id))
