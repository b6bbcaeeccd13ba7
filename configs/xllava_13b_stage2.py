"""X-LLaVA 13B stage 2 (paper section 4.3): projector + LLM visual instruction tuning on
LLaVA-Instruct-158K (en) + its Korean translation + the 91K mvif set (parallel en/ko/zh file, each
language used as its own sample). LLaVA-1.5 stage-2 hyperparameters.

  python -m xllava_jax.main --config configs/xllava_13b_stage2.py --workdir workdirs/xllava13b_s2 \
      --config.init.checkpoint=workdirs/xllava13b_s1 --config.tokenizer=/ckpt/xllava_tokenizer --config.data.root=/data
"""

from xllava_jax.train.defaults import llava15_recipe


def get_config(arg=None):
    """The stage-2 config."""
    c = llava15_recipe(2, "xllava_tokenizer", stage1_workdir="workdirs/xllava13b_s1")
    c.data.update(files=("llava_instruct_158k.json", "llava_instruct_158k.ko.json", "mvif.jsonl", "mvif.jsonl",
                         "mvif.jsonl"), langs=("", "", "en", "ko", "zh"))
    return c
