"""The AOT tool's generation programs are the inference engine's: `aot.compile.lower_generate` lowers the same
computation (StableHLO text, shardings included) that `infer.Engine` runs on a mesh sharding the KV cache on
batch and KV heads (4 simulated CPU devices, data 2 x tensor 2; no libtpu needed)."""

import pytest

from train_helpers import run_on_devices

SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from train_helpers import IMAGE_ID, tiny_cfg
from xllava_jax.aot.compile import lower_generate
import xllava_jax.infer.generate
from xllava_jax.models.params import build_model, init_params
from xllava_jax.sharding import make_mesh

g = sys.modules["xllava_jax.infer.generate"]

cfg = tiny_cfg()
mesh = make_mesh(data=2, fsdp=1, tensor=2)
engine = g.Engine(build_model(cfg), init_params(cfg, jax.random.PRNGKey(0)), None, mesh)
ran = {}

def spy(name, real):
    def call(*args, **kwargs):
        ran.setdefault(name, real.lower(*args, **kwargs).as_text())
        return real(*args, **kwargs)
    return call

g.prefill, g.decode = spy("prefill", g.prefill), spy("decode", g.decode)
prompt = [1, 5, *[IMAGE_ID] * cfg.num_image_tokens, 7, 8]
image = np.random.default_rng(0).normal(size=(16, 16, 3)).astype(np.float32)
out = engine.generate([prompt] * 3, [[image]] * 3, g.GenerationConfig(max_new_tokens=8, eos_ids=(2,), batch_size=4))
assert len(out) == 3
first, rest = lower_generate(cfg, mesh, engine.rules, batch=4, prompt_len=16, max_new_tokens=8)
aot = {"prefill": first.as_text(), "decode": rest.as_text()}
print(json.dumps({name: {"same": aot[name] == ran[name], "kv_sharded": "tensor" in ran[name]} for name in ran}))
"""


@pytest.mark.slow
def test_aot_generate_programs_are_the_engines(train_subprocess_env):
    result = run_on_devices(SCRIPT, 4, train_subprocess_env)
    assert set(result) == {"prefill", "decode"}
    assert result["prefill"] == {"same": True, "kv_sharded": True}, result
    assert result["decode"]["same"], result
