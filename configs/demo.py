"""The demo: the X-LLaVA recipe in miniature on CPU in minutes, no downloads (README "Set up").

  python -m xllava_jax.main --config configs/demo.py --workdir /tmp/xllava-demo

First the assets (xllava_jax/demo.py) go to DIR/data (or data.root): a synthetic multilingual
dataset (PIL-drawn scenes of a coloured shape at a position; captions, questions and answers as parallel
English/Korean/Chinese records), an English-only SentencePiece tokenizer, and its expansion with
Korean and Chinese pieces. Then the stages, each in DIR/<name>, each starting from the one before:

  base    stage 0 on English text with the English tokenizer: the stand-in for the English LLaMA-2
  stage0  vocabulary expansion: the decoder grows to the expanded tokenizer (new rows = mean of the
          old), then stage 0 on English + Korean + Chinese text (X-LLaVA section 4.2)
  stage1  the decoder becomes a LLaVA (CLIP + new projector); captions in the three languages
  stage2  projector + LLM on question answering in the three languages

and finally the held-out questions are answered per language, the model is exported to Hugging Face
and the export verified, and DIR/demo_report.json is written. The demo's CLIP is random (not
pretrained), so stage 1 trains it with the projector: that stands in for CLIP's own pretraining.

One stage alone: --config configs/demo.py:stage1 --config.init.checkpoint=DIR/stage0 (or
--config.init.source=random); tokenizer and data paths are relative to the asset root.
Overrides address a stage: --config.stage2.train.num_steps=50.
"""

import ml_collections

from xllava_jax.train.defaults import base_config, stage_list, tiny_model, with_recipe

LANGS = ("en", "ko", "zh")
STAGES = ("base", "stage0", "stage1", "stage2")


def stage_config(name: str) -> ml_collections.ConfigDict:
    """One demo stage by name (see STAGES)."""
    stage = {"base": 0, "stage0": 0, "stage1": 1, "stage2": 2}[name]
    c = tiny_model(base_config(stage), hidden=64, layers=2, vision_hidden=32, image_size=32, patch=8)
    c.tokenizer = "tokenizer_en/tokenizer.model" if name == "base" else "tokenizer"  # relative to the asset root
    c.init.source = "random" if name == "base" else "previous"
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.checkpoint.update(every_steps=200, keep=1)
    c.log.update(every_steps=20, peak_tflops=0.0)
    if stage == 0:
        c.model.kind = "llama"
        files = ("text_en.txt",) if name == "base" else tuple(f"text_{la}.txt" for la in LANGS)
        c.data.update(format="text", files=files, pack=True, max_len=128)
        c.train.update(batch_size=16, num_steps=120 if name == "base" else 200)
        c.optim.update(lr=3e-3, warmup_ratio=0.05)
    elif stage == 1:
        c.train.trainable = "vision_tower,projector"  # random CLIP: see the module docstring
        c.data.update(files=("captions.jsonl",) * 3, langs=LANGS, template="plain", max_len=40)
        c.train.update(batch_size=32, num_steps=200)
        c.optim.update(lr=2e-3, warmup_ratio=0.03)
    else:
        c.data.update(files=("qa.jsonl",) * 3, langs=LANGS, template="vicuna_v1", max_len=96)
        # reading the image takes the tiny model ~1000 steps to discover; its training accuracy reaches 0.99 by
        # step 1500 of a 3000-step run (0.99 held out); 2000 keep held-out accuracy >= 0.85 in about 3 minutes
        c.train.update(batch_size=16, num_steps=2000)
        c.optim.update(lr=2e-3, warmup_ratio=0.03)
        c.log.every_steps = 100
        c.eval_data.update(files=("captions.jsonl",), langs=("en",), template="plain", max_len=40)
    return c


def get_config(arg: str = ""):
    """The stage list (no arg), or one stage by name: base | stage0 | stage1 | stage2."""
    if arg:
        if arg not in STAGES:
            raise ValueError(f"configs/demo.py: unknown stage {arg!r}; choose from {', '.join(STAGES)}")
        c = stage_config(arg)
        if c.init.source == "previous":
            c.init.source = "checkpoint"
        return with_recipe(c, "demo")  # the assets first; its paths are relative to their root
    # the dataset and tokenizers to DIR/data first; evaluate and export at the end
    return stage_list({name: stage_config(name) for name in STAGES}, recipe="demo")
