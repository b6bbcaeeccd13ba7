"""HF <-> Flax conversion: export loads in transformers with the same logits, import then export
is bit-identical, fresh LLaVA from separate LLaMA + CLIP directories, and clear errors."""

import json

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

import hf_reference as ref
from xllava_jax.convert import hf as convert
from xllava_jax.convert.layout import LLAVA_PREFIXES
from xllava_jax.convert.safetensors_io import StateDict
from xllava_jax.models import CLIPVisionConfig, LlamaConfig, LlavaConfig, init_params




def tensors(directory) -> dict[str, np.ndarray]:
    state = StateDict(directory)
    return {k: state.get(k) for k in state.keys()}


def tiny_llava_config(**kw) -> LlavaConfig:
    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                image_size=28, patch_size=14),
        text=LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=20000.0),
        image_token_id=90, pad_token_id=91, **kw)


def ids_with_image(cfg: LlavaConfig) -> np.ndarray:
    ids = np.random.default_rng(0).integers(3, 80, size=(2, cfg.num_image_tokens + 6))
    ids[0, 1:1 + cfg.num_image_tokens] = cfg.image_token_id
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LLAVA_PREFIXES))
def test_export_loads_in_transformers_with_same_logits(tmp_path, layout):
    cfg = tiny_llava_config()
    params = init_params(cfg, jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda x: np.asarray(x) * 5.0, params)  # larger weights, visible errors
    convert.save_hf_llava(cfg, params, tmp_path, layout=layout)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids = ids_with_image(cfg)
    images = ref.images_nhwc(1, cfg.vision.image_size)
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids), pixel_values=ref.to_nchw(images)).logits.numpy()
    model, reloaded = convert.load_hf_llava(tmp_path)
    got = model.apply({"params": reloaded}, ids.astype(np.int32), pixel_values=images)
    assert model.cfg == cfg
    assert ref.scaled_diff(got, want) < ref.TOLERANCE


def test_import_then_export_is_bit_identical(tmp_path):
    ref.llava(seed=7).save_pretrained(tmp_path / "torch")
    model, params = convert.load_hf_llava(tmp_path / "torch")
    convert.save_hf_llava(model, params, tmp_path / "ours", layout="transformers-5")
    original, ours = tensors(tmp_path / "torch"), tensors(tmp_path / "ours")
    assert sorted(original) == sorted(ours)
    for key, value in original.items():
        assert value.dtype == ours[key].dtype and value.shape == ours[key].shape, key
        assert value.tobytes() == ours[key].tobytes(), key


@pytest.mark.slow
def test_export_preserves_bfloat16_and_shards(tmp_path):
    cfg = tiny_llava_config()
    params = convert.cast_params(init_params(cfg, jax.random.PRNGKey(1)), "bfloat16")
    convert.save_hf_llava(cfg, params, tmp_path, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["dtype"] == "bfloat16"
    for file in set(index["weight_map"].values()):
        with safetensors.safe_open(str(tmp_path / file), framework="numpy") as f:
            assert all(str(f.get_tensor(k).dtype) == "bfloat16" for k in f.keys())
    model, reloaded = convert.load_hf_llava(tmp_path)
    assert model.cfg.text.param_dtype == "bfloat16"
    same = jax.tree_util.tree_map(lambda a, b: np.asarray(a).tobytes() == np.asarray(b).tobytes(), params, reloaded)
    assert all(jax.tree_util.tree_leaves(same))


def test_llama_export_loads_in_transformers(tmp_path):
    hf = ref.llama(seed=8, num_key_value_heads=1)
    hf.save_pretrained(tmp_path / "in")
    model, params = convert.load_hf_llama(tmp_path / "in")
    convert.save_hf_llama(model, params, tmp_path / "out")
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.arange(20).reshape(2, 10)
    with torch.no_grad():  # the same torch program on the same inputs with round-tripped weights: bit for bit
        assert ref.scaled_diff(reloaded(input_ids=ids).logits, hf(input_ids=ids).logits) == 0.0
    assert tensors(tmp_path / "in").keys() == tensors(tmp_path / "out").keys()


@pytest.mark.slow
@pytest.mark.parametrize("clip_kind", ["CLIPVisionModel", "CLIPModel"])
def test_fresh_llava_from_llama_and_clip_directories(tmp_path, clip_kind):
    ref.llama(seed=9).save_pretrained(tmp_path / "llama")
    if clip_kind == "CLIPModel":
        clip_cfg = transformers.CLIPConfig(
            vision_config=ref.VISION, text_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                       num_attention_heads=2, vocab_size=50), projection_dim=16)
        clip = ref.randomize(transformers.CLIPModel(clip_cfg), 10)
        vision = clip.vision_model
    else:
        clip = vision = ref.clip_vision(seed=10)
    clip.save_pretrained(tmp_path / "clip")
    model, params = convert.init_llava_from_hf(tmp_path / "llama", tmp_path / "clip", seed=0)
    vocab = ref.TEXT["vocab_size"]
    assert (model.cfg.image_token_id, model.cfg.pad_token_id, model.cfg.text.vocab_size) == (vocab, vocab + 1, 192)
    _, lm_params = convert.load_hf_llama(tmp_path / "llama")
    assert np.array_equal(params["language_model"]["embed_tokens"]["embedding"][:vocab],
                          lm_params["embed_tokens"]["embedding"])
    assert np.array_equal(params["language_model"]["lm_head"]["kernel"][:, :vocab], lm_params["lm_head"]["kernel"])
    # the vision tower is CLIP's: LLaVA features equal CLIP layer -2 through our projector
    images = ref.images_nhwc(1, ref.VISION["image_size"])
    with torch.no_grad():
        want = vision(pixel_values=ref.to_nchw(images), output_hidden_states=True).hidden_states[-2].numpy()
    feats = model.apply({"params": params}, images, method=lambda m, x: m.vision_tower(x, -2))
    assert ref.scaled_diff(feats, want) < ref.TOLERANCE
    # and the whole thing exports to a transformers LLaVA with the same logits
    convert.save_hf_llava(model, params, tmp_path / "llava")
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    ids = ids_with_image(model.cfg) % vocab
    ids[0, 1:1 + model.cfg.num_image_tokens] = model.cfg.image_token_id
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids), pixel_values=ref.to_nchw(images)).logits.numpy()
    assert ref.scaled_diff(model.apply({"params": params}, ids.astype(np.int32), pixel_values=images), want) < ref.TOLERANCE


def test_errors_name_the_bad_key_shape_or_setting(tmp_path):
    ref.llama(seed=11).save_pretrained(tmp_path / "ok")
    state = tensors(tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())

    def write(name, tensors_, cfg):
        (tmp_path / name).mkdir()
        safetensors.numpy.save_file(tensors_, str(tmp_path / name / "model.safetensors"))
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        return tmp_path / name

    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        convert.load_hf_llama(write("missing", missing, config))
    bad = dict(state, **{"model.norm.weight": np.ones(7, np.float32)})
    with pytest.raises(ValueError, match=r"model.norm.weight.*\(7,\)"):
        convert.load_hf_llama(write("shape", bad, config))
    scaled = dict(config, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                  rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_type"):
        convert.load_hf_llama(write("rope", state, scaled))
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "config.json").write_text(json.dumps(config))
    (tmp_path / "pickle" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        convert.load_hf_llama(tmp_path / "pickle")


LEGACY_LLAVA = {  # the shape of llava-hf/llava-1.5-7b-hf's config.json (transformers 4.36): most values left default
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu", "tie_word_embeddings": False,
    "text_config": {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096, "model_type": "llama",
                    "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
    "torch_dtype": "float16", "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                                                "model_type": "clip_vision_model", "num_attention_heads": 16,
                                                "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}
LEGACY_LLAMA = {  # transformers 4 keys: rope_theta and rope_scaling, torch_dtype
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 256, "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "rope_scaling": None}


@pytest.mark.parametrize("case", ["saved_llava", "saved_llama", "legacy_llava", "legacy_llama"])
def test_config_json_reads_as_transformers(tmp_path, monkeypatch, case):
    """Our config of an HF directory read from config.json alone equals the one read through transformers'
    config (its defaults filled in); a file that leaves a setting to transformers' defaults goes through
    transformers."""
    if case.startswith("saved"):
        (ref.llava(seed=1) if case == "saved_llava" else ref.llama(seed=1)).config.save_pretrained(tmp_path)
    else:
        (tmp_path / "config.json").write_text(json.dumps(LEGACY_LLAVA if case == "legacy_llava" else LEGACY_LLAMA))
    reader = convert.hf_config.llava_from_hf if "llava" in case else convert.hf_config.llama_from_hf
    want = reader(transformers.AutoConfig.from_pretrained(str(tmp_path), local_files_only=True), dtype="bfloat16")
    fallbacks = []
    read = convert.read_hf_config
    monkeypatch.setattr(convert, "read_hf_config", lambda path: fallbacks.append(path) or read(path))
    assert convert.model_config(tmp_path, reader, dtype="bfloat16") == want
    assert bool(fallbacks) == (case == "legacy_llava")  # the legacy LLaMA file names every setting read
