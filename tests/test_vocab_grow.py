"""Growing a checkpoint's vocabulary: old rows bit-identical, new size, LLaVA image/pad ids following the
tokenizer, streaming HF directories, and exports that transformers loads with the new size."""

import inspect
import json

import jax
import numpy as np
import pytest
import torch
import transformers

import hf_reference as ref
from xllava_jax.convert import hf as convert
from xllava_jax.convert.safetensors_io import StateDict
from xllava_jax.models import CLIPVisionConfig, LlamaConfig, LlavaConfig, init_params
from xllava_jax.models.vocab import grow_rows, grow_vocab
from xllava_jax.convert import grow
from xllava_jax.tokenizer.__main__ import main as tokenizer_main
from xllava_jax.convert.__main__ import main as convert_main
from xllava_jax.tokenizer.spm import load_tokenizer
from xllava_jax import checkpoint

TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def same_bytes(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("method", ["mean", "mean_cov", "normal"])
def test_grow_vocab_keeps_old_rows_and_inits_new_ones(method):
    rng = np.random.default_rng(0)
    lm = {"embed_tokens": {"embedding": rng.normal(1.0, 0.5, (200, 16)).astype(np.float32)},
          "lm_head": {"kernel": rng.normal(-1.0, 0.5, (16, 200)).astype(np.float32)},
          "norm": {"scale": np.ones(16, np.float32)}}
    grown, cfg = grow_vocab(lm, LlamaConfig(vocab_size=200, **TEXT), 230, method, seed=1, pad_to_multiple=64)
    emb, head = grown["embed_tokens"]["embedding"], grown["lm_head"]["kernel"]
    assert cfg.vocab_size == 256 and emb.shape == (256, 16) and head.shape == (16, 256)
    assert same_bytes(emb[:200], lm["embed_tokens"]["embedding"]) and same_bytes(head[:, :200], lm["lm_head"]["kernel"])
    assert grown["norm"] is lm["norm"]
    old_mean = lm["embed_tokens"]["embedding"].mean(0)
    new = emb[200:]
    if method == "mean":
        np.testing.assert_allclose(new, np.broadcast_to(old_mean, new.shape), rtol=1e-6)
    elif method == "mean_cov":  # N(mean, 1e-5 cov): within a few 1e-3 of the mean, and not all equal
        assert np.abs(new - old_mean).max() < 0.02 and new.std(0).min() > 0
        assert np.abs(head[:, 200:].T - lm["lm_head"]["kernel"].mean(1)).max() < 0.02
    else:
        assert abs(new.std() - 0.02) < 0.003 and abs(new.mean()) < 0.003


def test_moved_rows_follow_their_token_and_vacated_ids_are_new():
    old = np.arange(40, dtype=np.float32).reshape(10, 4)
    grown = grow_rows(old, 16, "mean", np.random.default_rng(0), moved={8: 14, 9: 15})
    assert same_bytes(grown[:8], old[:8]) and same_bytes(grown[14], old[8]) and same_bytes(grown[15], old[9])
    np.testing.assert_allclose(grown[[8, 9, 10, 13]], np.broadcast_to(old.mean(0), (4, 4)))
    with pytest.raises(ValueError, match="shrink"):
        grow_vocab({"embed_tokens": {"embedding": old}}, LlamaConfig(vocab_size=10, **TEXT), 8)


def hf_logits(directory, ids: np.ndarray, cls=transformers.LlamaForCausalLM) -> np.ndarray:
    model = cls.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids)).logits.numpy()


@pytest.mark.slow
def test_grow_orbax_llama_then_export(tmp_path):
    cfg = LlamaConfig(vocab_size=128, **TEXT)
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(0)))
    checkpoint.save_params(tmp_path / "ckpt", params, cfg)
    convert_main(["grow-vocab", "--checkpoint", str(tmp_path / "ckpt"), "--vocab_size", "150", "--method", "mean_cov",
                    "--pad_to_multiple", "64", "--out", str(tmp_path / "grown")])
    new_cfg, new = checkpoint.load_params(tmp_path / "grown")
    assert new_cfg == LlamaConfig(vocab_size=192, **TEXT)
    assert same_bytes(np.asarray(new["embed_tokens"]["embedding"])[:128], params["embed_tokens"]["embedding"])
    assert same_bytes(np.asarray(new["lm_head"]["kernel"])[:, :128], params["lm_head"]["kernel"])
    assert same_bytes(new["layers"]["mlp"]["down_proj"]["kernel"], params["layers"]["mlp"]["down_proj"]["kernel"])

    convert.save_hf_llama(cfg, params, tmp_path / "hf_old")
    convert.save_hf_llama(new_cfg, jax.tree_util.tree_map(np.asarray, new), tmp_path / "hf_new")
    assert json.loads((tmp_path / "hf_new" / "config.json").read_text())["vocab_size"] == 192
    ids = np.random.default_rng(0).integers(3, 128, (2, 9))
    want, got = hf_logits(tmp_path / "hf_old", ids), hf_logits(tmp_path / "hf_new", ids)
    assert got.shape[-1] == 192
    np.testing.assert_allclose(got[..., :128], want, atol=1e-5)


@pytest.fixture(scope="module")
def expanded_tokenizer(spm_model_path, tmp_path_factory):
    """The 1000-piece test tokenizer expanded by a few Korean words: an HF directory with <image>, <pad> after it."""
    out = tmp_path_factory.mktemp("grow_tok")
    (out / "words.txt").write_text("학교\n선생님\n도서관\n컴퓨터\n대한민국\n", encoding="utf-8")
    tokenizer_main(["expand", "--base", str(spm_model_path), "--add-vocab", str(out / "words.txt"),
                    "--out", str(out / "tok")])
    return out / "tok"


@pytest.mark.slow
def test_grow_orbax_llava_to_expanded_tokenizer_then_export(tmp_path, hf_llama_tokenizer_dir, expanded_tokenizer):
    base_tok, tok = load_tokenizer(hf_llama_tokenizer_dir), load_tokenizer(expanded_tokenizer)
    cfg = LlavaConfig(vision=CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                              num_attention_heads=4, image_size=28, patch_size=14),
                      text=LlamaConfig(vocab_size=1024, **TEXT), image_token_id=base_tok.image_token_id,
                      pad_token_id=base_tok.pad_id)
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(1)))
    checkpoint.save_params(tmp_path / "ckpt", params, cfg)
    convert_main(["grow-vocab", "--checkpoint", str(tmp_path / "ckpt"), "--tokenizer", str(expanded_tokenizer),
                    "--pad_to_multiple", "64", "--out", str(tmp_path / "grown")])
    new_cfg, new = checkpoint.load_params(tmp_path / "grown")
    p = tok.sp_vocab_size
    assert p > 1002 and (new_cfg.image_token_id, new_cfg.pad_token_id) == (p, p + 1) == \
           (tok.image_token_id, tok.pad_id)
    assert new_cfg.text.vocab_size == -(-(p + 2) // 64) * 64
    old_emb, emb = params["language_model"]["embed_tokens"]["embedding"], np.asarray(
        new["language_model"]["embed_tokens"]["embedding"])
    assert same_bytes(emb[:1000], old_emb[:1000]) and same_bytes(emb[1002:1024], old_emb[1002:])
    assert same_bytes(emb[p], old_emb[1000]) and same_bytes(emb[p + 1], old_emb[1001])
    assert not np.array_equal(emb[1000], old_emb[1000])  # the id <image> left is a new piece now
    assert same_bytes(new["vision_tower"]["post_layernorm"]["scale"], params["vision_tower"]["post_layernorm"]["scale"])

    convert.save_hf_llava(new_cfg, jax.tree_util.tree_map(np.asarray, new), tmp_path / "hf",
                          tokenizer_dir=expanded_tokenizer)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["text_config"]["vocab_size"], config["image_token_index"]) == (new_cfg.text.vocab_size, p)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert model.get_input_embeddings().weight.shape[0] == new_cfg.text.vocab_size
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")
    ids = processor(text=["<image>\n학교 도서관"], images=[np.zeros((28, 28, 3), np.uint8)]).input_ids[0]
    assert ids.count(p) == new_cfg.num_image_tokens and tok.encode_plain("도서관") == [tok.sp.piece_to_id("▁도서관")] and ids[-1] == tok.sp.piece_to_id("▁도서관")


@pytest.mark.parametrize("tied", [False, True])
def test_grow_hf_llama_directory_streams(tmp_path, monkeypatch, expanded_tokenizer, tied):
    original = ref.llama(seed=3, tie_word_embeddings=tied)
    original.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")  # an old tokenizer file that must not survive
    reads: list[str] = []
    real_get, real_write = StateDict.get, grow.write_sharded

    def counting_get(self, key):
        reads.append(key)
        return real_get(self, key)

    def checking_write(directory, tensors, max_shard_bytes):
        assert inspect.isgenerator(tensors)  # tensors are produced one at a time, not gathered first
        first = next(tensors)
        assert len(reads) <= 3, reads  # embedding (+ head) and the first tensor only

        def chain():
            yield first
            yield from tensors
        return real_write(directory, chain(), max_shard_bytes=20_000)

    monkeypatch.setattr(StateDict, "get", counting_get)
    monkeypatch.setattr(grow, "write_sharded", checking_write)
    convert_main(["grow-vocab", "--hf_dir", str(tmp_path / "hf"), "--tokenizer", str(expanded_tokenizer),
                    "--method", "normal", "--out", str(tmp_path / "out")])
    size = load_tokenizer(expanded_tokenizer).vocab_size
    before, after = StateDict(tmp_path / "hf"), StateDict(tmp_path / "out")
    assert sorted(before.keys()) == sorted(after.keys())
    assert len(set(after.files.values())) > 1
    for key in before.keys():
        old, new = real_get(before, key), real_get(after, key)
        if key in (grow.EMBED_KEY, grow.HEAD_KEY):
            assert new.shape == (size, old.shape[1]) and same_bytes(new[:old.shape[0]], old), key
        else:
            assert same_bytes(new, old), key
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == size and config["tie_word_embeddings"] == tied
    assert json.loads((tmp_path / "out" / "tokenizer.json").read_text()) != {}
    ids = np.random.default_rng(0).integers(3, ref.TEXT["vocab_size"], (2, 7))
    want, got = hf_logits(tmp_path / "hf", ids), hf_logits(tmp_path / "out", ids)
    assert got.shape[-1] == size
    np.testing.assert_allclose(got[..., :ref.TEXT["vocab_size"]], want, atol=1e-5)


def test_grow_errors_name_the_problem(tmp_path):
    ref.llava(seed=0).save_pretrained(tmp_path / "llava")
    with pytest.raises(ValueError, match="model_type 'llava'"):
        grow.grow_hf_llama(tmp_path / "llava", tmp_path / "out", grow.Target(300))
    ref.llama(seed=0).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="shrink"):
        grow.grow_hf_llama(tmp_path / "llama", tmp_path / "out", grow.Target(64))
