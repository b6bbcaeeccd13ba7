"""LRM-LLaVA 13B (Vicuna-13B + CLIP ViT-L/14): the LLaVA-1.5 pipeline with the cross-modal regularizer's
task instructions built from parallel data: MVQA in stage 1, MVQA + EP-VQA + BVQA in stage 2, English
50% of the mix. Paper hyperparameters: stage 1 lr 1e-3, batch 24 x 8 GPUs; stage 2 lr 2e-5,
batch 32 x 8; max length 2048; 1 epoch each. Arg: stage1 | stage2. The explicit consistency loss is
off (train.consistency_weight=0.0); README "Training" defines it.

  python -m xllava_jax.main --config configs/lrm_llava_13b.py:stage1 --workdir workdirs/lrm13b_s1 \
      --config.init.llama_dir=/ckpt/vicuna-13b-v1.5 --config.init.clip_dir=/ckpt/clip-vit-large-patch14-336 \
      --config.tokenizer=/ckpt/vicuna-13b-v1.5 --config.data.root=/data
"""

from xllava_jax.train.defaults import llava15_recipe


def get_config(arg: str = "stage1"):
    """The stage config (arg stage1 | stage2)."""
    stage = {"stage1": 1, "stage2": 2}[arg or "stage1"]
    c = llava15_recipe(stage, "vicuna-13b-v1.5", stage1_workdir="workdirs/lrm13b_s1")
    c.data.files = ()
    c.data.task_mix.update(files=("lrm_pretrain.parallel.jsonl",) if stage == 1 else ("lrm_finetune.parallel.jsonl",),
                           tasks="mvqa" if stage == 1 else "mvqa,ep_vqa,bvqa", non_english_ratio=1.0)
    c.data.group_by_length = False
    c.train.batch_size = 192 if stage == 1 else 256
    return c
