"""The layer loop converts weights one layer at a time: XLA's memory analysis (compile only, nothing allocated) of
a wide, many-layer LLaVA with bf16 params and bf16 compute keeps the temporaries of its forward, prefill and
decode a small share of the weight bytes. XLA:CPU computes a 16-bit slice in float32 by converting its whole
operand; a conversion of the stacked weights hoisted out of the layer loop is a float32 copy of every layer,
2x the bf16 weight bytes. (With scan_layers False XLA:CPU's scheduler may still make every layer's float32
slice before the first layer runs: the scanned loop is the memory-lean form.)"""

import jax
import jax.numpy as jnp
from xllava_jax.infer.generate import decode, prefill
from xllava_jax.infer.sampling import SamplingConfig
from xllava_jax.models.clip import CLIPVisionConfig
from xllava_jax.models.llama import LlamaConfig
from xllava_jax.models.llava import LlavaConfig
from xllava_jax.models.params import abstract_params, build_model

# 16 decoder and 8 CLIP layers, so one layer's float32 weights are ~1/8 of the bf16 weight bytes.
TEXT = dict(vocab_size=512, hidden_size=512, intermediate_size=1536, num_hidden_layers=16, num_attention_heads=8,
            num_key_value_heads=8)
VISION = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=4, image_size=56,
              patch_size=14)
MAX_SHARE = 0.3  # temporaries / weight bytes (whole-stack conversion: >= 2.0)
PROMPT, NEW = 24, 8


def llava(param_dtype: str) -> LlavaConfig:
    ex = dict(dtype="bfloat16", param_dtype=param_dtype)
    return LlavaConfig(vision=CLIPVisionConfig(**VISION, **ex), text=LlamaConfig(**TEXT, **ex), image_token_id=510,
                       pad_token_id=511)


def sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def weight_bytes(params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def programs(cfg: LlavaConfig):
    """(name, compiled) of the forward, the prefill and the decode on abstract inputs."""
    model, params = build_model(cfg), abstract_params(cfg)
    ids, pixels = sds((1, PROMPT), jnp.int32), sds((1, 56, 56, 3), jnp.float32)
    yield "forward", jax.jit(lambda p, i, x: model.apply({"params": p}, i, x)).lower(params, ids, pixels).compile()
    args = (model, params, ids, sds((1, PROMPT), jnp.int32), sds((1, PROMPT), jnp.int32), pixels,
            sds((1,), jnp.int32), sds((2,), jnp.uint32), sds((), jnp.int32))
    kw = dict(max_new_tokens=NEW, sampling=SamplingConfig())
    yield "prefill", prefill.lower(*args, **kw).compile()
    state = jax.eval_shape(lambda *a: prefill(model, *a, **kw), *args[1:])
    yield "decode", decode.lower(model, params, state, sds((1,), jnp.int32), sds((), jnp.int32),
                                 sampling=SamplingConfig()).compile()


def test_temporaries_are_not_weights():
    cfg = llava("bfloat16")
    weights = weight_bytes(abstract_params(cfg))
    for name, compiled in programs(cfg):
        temp = compiled.memory_analysis().temp_size_in_bytes
        assert temp < MAX_SHARE * weights, (f"{name}: {temp / 2**20:.1f} MiB of temporaries for "
                                            f"{weights / 2**20:.1f} MiB of bf16 weights")

