"""LLaVA-1.5 7B (Vicuna-7B v1.5 + CLIP ViT-L/14-336), published recipe. Arg: stage1 | stage2.

  python -m xllava_jax.main --config configs/llava15_7b.py:stage1 --workdir workdirs/llava15_7b_s1 \
      --config.init.llama_dir=/ckpt/vicuna-7b-v1.5 --config.init.clip_dir=/ckpt/clip-vit-large-patch14-336 \
      --config.tokenizer=/ckpt/vicuna-7b-v1.5 --config.data.root=/data
  python -m xllava_jax.main --config configs/llava15_7b.py:stage2 --workdir workdirs/llava15_7b_s2 \
      --config.init.checkpoint=workdirs/llava15_7b_s1 --config.tokenizer=/ckpt/vicuna-7b-v1.5 --config.data.root=/data
"""

from xllava_jax.train.defaults import llava15_recipe


def get_config(arg: str = "stage1"):
    """The stage config (arg stage1 | stage2)."""
    return llava15_recipe({"stage1": 1, "stage2": 2}[arg or "stage1"], "vicuna-7b-v1.5",
                          stage1_workdir="workdirs/llava15_7b_s1")
