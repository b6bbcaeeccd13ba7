"""X-LLaVA 13B stage 0 (paper section 4.2): LLaMA-2-13B with the vocabulary-expanded tokenizer
(32,000 -> 39,478 pieces; new embedding and LM-head rows are grown at init, randomly as in the paper),
causal-LM pretraining
on packed English + Korean Wikipedia. The paper gives no stage-0 hyperparameters: lr, batch and
length below are our choice.

  python -m xllava_jax.main --config configs/xllava_13b_stage0.py --workdir workdirs/xllava13b_s0 \
      --config.init.llama_dir=/ckpt/llama-2-13b-hf --config.tokenizer=/ckpt/xllava_tokenizer --config.data.root=/data
"""

from xllava_jax.train.defaults import base_config


def get_config(arg=None):
    """The stage-0 config."""
    c = base_config(0)
    c.model.update(kind="llama", dtype="bfloat16", param_dtype="float32", remat_policy="full")
    # the paper: "we randomly initialize embeddings for these newly added words" -> normal (N(0, 0.02^2));
    # --config.init.new_rows_init=mean gives LLaVA's mean of the old rows instead
    c.init.update(source="hf_llama", llama_dir="llama-2-13b-hf", new_rows_init="normal", pad_vocab_to=64)
    c.tokenizer = "xllava_tokenizer"  # the expanded tokenizer (python -m xllava_jax.tokenizer ...)
    c.data.update(format="text", files=("wiki_en.jsonl", "wiki_ko.jsonl"), weights=(1.0, 1.0), pack=True,
                  max_len=2048, num_workers=8)
    c.train.update(batch_size=64, num_epochs=1.0)
    c.optim.update(lr=5e-5, warmup_ratio=0.01, weight_decay=0.0)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.checkpoint.update(every_steps=1000, keep=2)
    return c
