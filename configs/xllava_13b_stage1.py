"""X-LLaVA 13B stage 1 (paper section 4.3): projector-only alignment on image-caption pairs,
English and machine-translated Korean mixed (XLM-style); the LLM is the stage-0 checkpoint, the
vision tower CLIP ViT-L/14-336. LLaVA-1.5 stage-1 hyperparameters.

  python -m xllava_jax.main --config configs/xllava_13b_stage1.py --workdir workdirs/xllava13b_s1 \
      --config.init.checkpoint=workdirs/xllava13b_s0 --config.init.clip_dir=/ckpt/clip-vit-large-patch14-336 \
      --config.tokenizer=/ckpt/xllava_tokenizer --config.data.root=/data
"""

from xllava_jax.train.defaults import llava15_recipe


def get_config(arg=None):
    """The stage-1 config."""
    c = llava15_recipe(1, "xllava_tokenizer")
    c.init.update(source="checkpoint", checkpoint="workdirs/xllava13b_s0", llama_dir="")
    c.data.update(files=("blip_laion_cc_sbu_558k.json", "blip_laion_cc_sbu_558k.ko.json"), weights=(1.0, 1.0))
    return c
