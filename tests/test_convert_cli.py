"""The convert CLI: HF -> Orbax -> HF round trip, with a tokenizer and processor that
transformers' AutoProcessor loads and whose outputs drive the exported model."""

import jax
import numpy as np
import torch
import transformers
from PIL import Image

import hf_reference as ref
from xllava_jax.convert.__main__ import main as convert_main
from xllava_jax import checkpoint, cli

VOCAB = 1024  # the 1000-piece test tokenizer + <image> (1000) + <pad> (1001), padded to 64


def test_hf_to_orbax_to_hf_round_trip_with_processor(tmp_path, hf_llama_tokenizer_dir):
    hf = ref.llava(seed=12, text={"vocab_size": VOCAB}, image_token_index=1000)
    hf.save_pretrained(tmp_path / "hf")
    convert_main(["hf-to-orbax", "--hf_dir", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")])
    cfg = checkpoint.load_config(tmp_path / "ckpt")
    assert (cfg.image_token_id, cfg.text.vocab_size) == (1000, VOCAB)
    convert_main(["orbax-to-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"),
                  "--tokenizer_dir", str(hf_llama_tokenizer_dir)])

    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "out")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8))
    inputs = processor(text=["<image>\nWhat is on the table?", "테이블 위에 무엇이 있습니까?"], images=[image],
                       return_tensors="pt", padding=True)
    num_patches = (ref.VISION["image_size"] // ref.VISION["patch_size"]) ** 2
    assert int((inputs["input_ids"][0] == 1000).sum()) == num_patches
    assert tuple(inputs["pixel_values"].shape) == (1, 3, ref.VISION["image_size"], ref.VISION["image_size"])

    exported = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        want = hf(**inputs).logits
        got = exported(**inputs).logits
    assert torch.equal(want, got)


def test_fresh_llava_from_llama_and_clip_via_cli(tmp_path):
    ref.llama(seed=13).save_pretrained(tmp_path / "llama")
    ref.clip_vision(seed=14).save_pretrained(tmp_path / "clip")
    convert_main(["hf-to-orbax", "--llama_dir", str(tmp_path / "llama"), "--clip_dir", str(tmp_path / "clip"),
                  "--out", str(tmp_path / "ckpt"), "--dtype", "bfloat16"])
    cfg, params = checkpoint.load_params(tmp_path / "ckpt")
    assert cfg.image_token_id == ref.TEXT["vocab_size"] and cfg.text.vocab_size % 64 == 0
    assert str(params["projector"]["linear_1"]["kernel"].dtype) == "bfloat16"
    convert_main(["orbax-to-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")])
    model = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert model.config.text_config.vocab_size == cfg.text.vocab_size
    assert model.dtype == torch.bfloat16


def test_conversion_too_big_for_the_host_stops_before_any_work(tmp_path, monkeypatch, capsys):
    ref.llama(seed=15).save_pretrained(tmp_path / "llama")
    convert_main(["hf-to-orbax", "--hf_dir", str(tmp_path / "llama"), "--out", str(tmp_path / "ckpt")])
    weights = sum(x.nbytes for x in jax.tree.leaves(checkpoint.load_params(tmp_path / "ckpt")[1]))
    monkeypatch.setattr(cli, "available_memory", lambda: weights // 2)
    jobs = {"hf-to-orbax": ["--hf_dir", str(tmp_path / "llama")], "orbax-to-hf": ["--checkpoint", str(tmp_path / "ckpt")]}
    for job, source in jobs.items():
        out = tmp_path / f"{job}-out"
        assert convert_main([job, *source, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{job} of" in err and "needs about" in err and cli.SKIP_MEMORY_CHECK_ENV in err, err
        assert not out.exists()
    monkeypatch.setenv(cli.SKIP_MEMORY_CHECK_ENV, "1")
    assert convert_main(["orbax-to-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "model.safetensors").exists()
