"""Config files load and validate; inconsistent settings fail at start with errors naming them."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from xllava_jax.data.templates import Segment, Template, register_template
from xllava_jax.train.defaults import base_config
from xllava_jax.train.validate import ConfigError, trainable_groups, validate

CONFIGS = Path(__file__).parents[1] / "configs"


def load(name: str, arg=None):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg else mod.get_config()


@pytest.mark.parametrize("name,arg", [("demo", None), ("demo", "stage1"), ("llava15_7b", "stage1"),
                                      ("llava15_7b", "stage2"), ("llava15_13b", "stage1"), ("llava15_13b", "stage2"),
                                      ("xllava_13b_stage0", None), ("xllava_13b_stage1", None),
                                      ("xllava_13b_stage2", None), ("lrm_llava_13b", "stage1"),
                                      ("lrm_llava_13b", "stage2")])
def test_shipped_configs_validate(name, arg):
    c = load(name, arg)
    if name == "demo":  # the demo writes its tokenizer at run time
        for s in ([c[n] for n in c.stages] if c.get("stages") else [c]):
            s.tokenizer = "tokenizer.model"
            s.init.checkpoint = s.init.checkpoint or "previous_run"
    validate(c, num_devices=8)


def test_published_hyperparameters():
    s1, s2 = load("llava15_13b", "stage1"), load("llava15_13b", "stage2")
    assert (s1.train.batch_size, s1.optim.lr, s1.data.template, trainable_groups(s1)) == (256, 1e-3, "plain",
                                                                                        ("projector",))
    assert (s2.train.batch_size, s2.optim.lr, s2.data.template) == (128, 2e-5, "vicuna_v1")
    assert set(trainable_groups(s2)) == {"projector", "language_model"}
    for c in (s1, s2):
        assert (c.optim.warmup_ratio, c.optim.weight_decay, c.data.max_len, c.train.num_epochs) == (0.03, 0.0, 2048, 1)
    lrm1, lrm2 = load("lrm_llava_13b", "stage1"), load("lrm_llava_13b", "stage2")
    assert lrm1.data.task_mix.tasks == "mvqa" and lrm2.data.task_mix.tasks == "mvqa,ep_vqa,bvqa"


def valid():
    c = base_config(1)
    c.tokenizer = "tok.model"
    c.data.files = ("captions.jsonl",)
    c.train.batch_size = 8
    return c


def errors_of(c, devices=8) -> str:
    with pytest.raises(ConfigError) as e:
        validate(c, num_devices=devices)
    return str(e.value)


def test_the_valid_base_passes():
    validate(valid(), num_devices=8)


@pytest.mark.parametrize("change,named", [
    (lambda c: c.mesh.update(data=3), "mesh data=3 x fsdp=1 x tensor=1 does not divide the 8 devices"),
    (lambda c: c.train.update(trainable="projector,language_model"), "keeps the language model frozen"),
    (lambda c: c.update(stage=2) or c.train.update(trainable="vision_tower,projector"), "stage=2 trains the projector and the language model"),
    (lambda c: c.mesh.update(data=1, fsdp=8) or c.train.update(batch_size=12), "not divisible by the batch-sharding"),
    (lambda c: c.train.update(batch_size=8, grad_accum=3), "train.batch_size=8 is not divisible by train.grad_accum=3"),
    (lambda c: c.init.update(source="hf"), "init.source='hf' needs init.llama_dir"),
    (lambda c: c.init.update(source="s3"), "init.source='s3'"),
    (lambda c: c.data.update(pack=True, template="no_bos"), "data.pack=True with template 'no_bos'"),
    (lambda c: c.data.update(pack=True, group_by_length=True), "data.pack=True with data.group_by_length=True"),
    (lambda c: c.data.update(template="chatml"), "data.template='chatml'"),
    (lambda c: c.data.update(weights=(1.0, 2.0)), "data.weights has 2 entries for 1 files"),
    (lambda c: c.update(stage=0), "stage=0 is causal-LM pretraining: data.format must be 'text'"),
    (lambda c: c.update(stage=0) or c.train.update(trainable="projector"), "stage=0 trains only the language model"),
    (lambda c: c.train.update(consistency_weight=0.1) or c.update(stage=0), "consistency_weight > 0 needs images"),
    (lambda c: c.model.update(attention="cudnn"), "model.attention='cudnn' needs model.dtype"),
    (lambda c: c.model.update(remat_policy="sometimes"), "remat_policy='sometimes'"),
    (lambda c: c.optim.update(warmup_ratio=1.5), "optim.warmup_ratio=1.5"),
    (lambda c: c.update(tokenizer=""), "tokenizer is empty"),
])
def test_inconsistent_settings_are_named(change, named):
    register_template(Template("no_bos", "", lambda turns, system, gen: [Segment("text", turns[0][1], True)]))
    c = valid()
    change(c)
    assert named in errors_of(c)


def test_every_problem_is_reported_at_once():
    c = valid()
    c.mesh.data = 3
    c.train.trainable = "language_model"
    text = errors_of(c)
    assert "mesh data=3" in text and "keeps the language model frozen" in text


def test_cli_override_error_exits_before_training(tmp_path):
    cmd = [sys.executable, "-m", "xllava_jax.main", "--config", f"{CONFIGS}/demo.py:stage1", "--workdir",
           str(tmp_path / "w"), "--config.mesh.data=3", f"--config.data.root={tmp_path}/none",
           "--config.tokenizer=tok.model"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=CONFIGS.parent, timeout=300,
                         env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "mesh data=3" in out.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_locked_schema_names_an_unknown_key(tmp_path):
    """A key train/defaults.py does not define is an error naming it: set on a base config (locked), in a config
    built another way (validate), and in a config file run by the training CLI (before anything starts)."""
    import ml_collections

    with pytest.raises(AttributeError, match="instrucion"):
        base_config(2).data.instrucion = "Answer briefly."
    c = ml_collections.ConfigDict(valid().to_dict())
    c.data.instrucion = "Answer briefly."
    with pytest.raises(ConfigError, match=r"unknown setting data\.instrucion; did you mean data\.instruction\?"):
        validate(c, num_devices=1)
    del c.data.instrucion
    del c.train.grad_accum
    with pytest.raises(ConfigError, match=r"missing setting train\.grad_accum"):
        validate(c, num_devices=1)
    listed = load("demo")
    listed.unlock()
    listed.stage9 = listed.stage2
    with pytest.raises(ConfigError, match="unknown setting stage9 in a stage list"):
        validate(listed, num_devices=1)

    config = tmp_path / "typo.py"
    config.write_text("import ml_collections\nfrom xllava_jax.train.defaults import base_config\n\n\n"
                      "def get_config():\n    c = ml_collections.ConfigDict(base_config(2).to_dict())\n"
                      "    c.data.instrucion = 'Answer briefly.'\n    return c\n")
    out = subprocess.run([sys.executable, "-m", "xllava_jax.main", "--config", str(config), "--workdir",
                          str(tmp_path / "w")], capture_output=True, text=True, cwd=CONFIGS.parent, timeout=300,
                         env={**__import__("os").environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(CONFIGS.parent)})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "unknown setting data.instrucion; did you mean data.instruction?" in out.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_instruction_is_a_setting_with_a_default():
    c = base_config(2)
    assert c.data.instruction is None and c.eval_data.instruction is None
    c.data.instruction = "Answer the question using a single word or phrase."
    validate(valid(), num_devices=1)
