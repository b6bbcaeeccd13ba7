"""Config validation at start: every inconsistent setting is named in one ConfigError."""

from __future__ import annotations

import difflib
import logging
import math
import os

import ml_collections

from xllava_jax.cli import UserError
from xllava_jax.data.templates import get_template
from xllava_jax.models.layers import ATTENTION_IMPLEMENTATIONS, DTYPES, remat_policy
from xllava_jax.train.defaults import (CONVERSATION_FORMATS, RECIPES, RUN_KEYS, STAGE_TRAINABLE, TEXT_FORMATS,
                                       base_config)

log = logging.getLogger(__name__)
GROUPS = ("vision_tower", "projector", "language_model")
INIT_SOURCES = ("random", "hf", "hf_llava", "hf_llama", "checkpoint", "previous")


class ConfigError(UserError, ValueError):
    """Raised with every problem found in a training config."""


def override_problem(config: ml_collections.ConfigDict, key: str) -> str | None:
    """Why `--config.KEY=...` does not name a setting of `config` (None when it does): the nearest existing key,
    or, for a stage list, that the stage name comes first."""
    node, done = config, []
    for part in key.split("."):
        if isinstance(node, (ml_collections.ConfigDict, dict)) and part in node:
            node, done = node[part], done + [part]
            continue
        where = ".".join(done)
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            return f"--config.{key}: {where} is a value ({node!r}), it has no setting {part!r}"
        keys = sorted(node.keys())
        if not done and config.stages:
            stages = list(config.stages)
            return (f"--config.{key}: this config is a stage list (stages: {', '.join(stages)}); put the stage "
                    f"name first, e.g. --config.{stages[-1]}.{key}")
        close = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
        hint = f"; did you mean --config.{'.'.join(done + close)}?" if close else f"; settings there: {', '.join(keys)}"
        return f"--config.{key}: no setting {part!r} in {'config.' + where if where else 'the config'}{hint}"
    return None


def _nearest(key: str, keys: list[str]) -> str:
    """'; did you mean X?' for the closest of `keys`, else ''."""
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def schema_problems(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                    where: str = "") -> list[str]:
    """Keys of `config` that `schema` (train.defaults.base_config) does not define, and keys it defines that
    `config` lacks, each named in full (e.g. 'data.instrucion')."""
    p = []
    for key in config.keys():
        name = f"{where}{key}"
        if key not in schema:
            p.append(f"unknown setting {name}{_nearest(name, [where + k for k in schema.keys()])} (every setting "
                     "is defined in xllava_jax/train/defaults.py)")
        elif isinstance(schema[key], ml_collections.ConfigDict):
            if isinstance(config[key], ml_collections.ConfigDict):
                p += schema_problems(config[key], schema[key], f"{name}.")
            else:
                p.append(f"{name} is a group of settings, not a value ({config[key]!r})")
    p += [f"missing setting {where}{k} (a config starts from train.defaults.base_config)"
          for k in schema.keys() if k not in config]
    return p


def run_schema_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Schema problems of a run config: a stage config (plus an optional `recipe`), or a stage list (`stages`,
    `recipe` and the stages it names)."""
    recipe = config.recipe if "recipe" in config else ""
    p = [] if recipe in RECIPES else [f"recipe={recipe!r}; expected one of {RECIPES}"]
    if "stages" in config and config.stages:
        allowed = set(RUN_KEYS) | set(config.stages)
        p += [f"unknown setting {k} in a stage list (its keys: stages, recipe and the stage names "
              f"{', '.join(config.stages)})" for k in config.keys() if k not in allowed]
        for name in config.stages:
            if name in config:
                p += [f"{name}: {e}" for e in _stage_schema_problems(config[name])]
        return p
    return p + _stage_schema_problems(config, run_level=True)


def _stage_schema_problems(config: ml_collections.ConfigDict, run_level: bool = False) -> list[str]:
    """Schema problems of one stage config (`recipe` allowed when it is the whole run)."""
    if not isinstance(config, ml_collections.ConfigDict) or "stage" not in config:
        return ["not a stage config (a config starts from train.defaults.base_config)"]
    keys = [k for k in config.keys() if not (run_level and k == "recipe")]
    return schema_problems(ml_collections.ConfigDict({k: config[k] for k in keys}), base_config(config.stage))


def trainable_groups(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The parameter groups trained in this run (explicit `train.trainable`, else the stage default)."""
    spec = config.train.trainable or STAGE_TRAINABLE.get(config.stage, "")
    return tuple(g.strip() for g in spec.split(",") if g.strip())


def mesh_size(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with a -1 resolved against `num_devices` (0 where it cannot be)."""
    sizes = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
    known = math.prod(s for s in sizes if s != -1)
    return tuple((num_devices // known if known and num_devices % known == 0 else 0) if s == -1 else s for s in sizes)


def _stage_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Stage, trainable groups and init source."""
    p = []
    if config.stage not in (0, 1, 2):
        return [f"stage={config.stage!r}; expected 0, 1 or 2"]
    groups = trainable_groups(config)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        p.append(f"train.trainable={config.train.trainable!r}: unknown groups {unknown} (expected some of {GROUPS})")
    if config.stage == 1 and ("projector" not in groups or "language_model" in groups):
        p.append(f"stage=1 trains the projector (optionally the vision tower) and keeps the language model frozen, "
                 f"but train.trainable={','.join(groups)!r}")
    if config.stage == 2 and ("language_model" not in groups or "projector" not in groups):
        p.append(f"stage=2 trains the projector and the language model, but train.trainable={','.join(groups)!r}")
    if config.stage == 0 and ("language_model" not in groups or set(groups) - {"language_model"}):
        p.append(f"stage=0 trains only the language model, but train.trainable={','.join(groups)!r}")
    if config.stage in (1, 2) and config.model.kind != "llava":
        p.append(f"stage={config.stage} needs model.kind='llava', got {config.model.kind!r}")
    if config.model.kind not in ("llava", "llama"):
        p.append(f"model.kind={config.model.kind!r}; expected 'llava' or 'llama'")
    src = config.init.source
    if src not in INIT_SOURCES:
        p.append(f"init.source={src!r}; expected one of {INIT_SOURCES}")
    need = {"hf": ("llama_dir", "clip_dir"), "hf_llava": ("llava_dir",), "hf_llama": ("llama_dir",),
            "checkpoint": ("checkpoint",)}.get(src, ())
    p += [f"init.source={src!r} needs init.{k}" for k in need if not config.init[k]]
    if src == "hf_llama" and config.stage != 0:
        p.append(f"init.source='hf_llama' gives a bare decoder: only stage 0 trains it (stage={config.stage}); "
                 "use 'hf' with a clip_dir for stage 1")
    if not config.tokenizer:
        p.append("tokenizer is empty: set the tokenizer.model file or HF tokenizer directory")
    return p


def _starts_untrained(template: str) -> bool:
    """Whether every sample of `template` begins with an untrained BOS (so packing cannot leak labels)."""
    try:
        first = get_template(template).segments([("human", "q"), ("gpt", "a")])[0]
    except KeyError:
        return True  # the unknown template is reported on its own
    return first.kind == "bos" and not first.trained


def _either(values: tuple[str, ...]) -> str:
    """"'a' or 'b'"."""
    return " or ".join(repr(v) for v in values)


def _data_problems(config: ml_collections.ConfigDict, name: str = "data") -> list[str]:
    """Data files, weights, template and packing."""
    d, p = config[name], []
    if d.format not in TEXT_FORMATS + CONVERSATION_FORMATS:
        p.append(f"{name}.format={d.format!r}; expected one of {TEXT_FORMATS + CONVERSATION_FORMATS}")
    if name == "data" and not d.files and not d.task_mix.files:
        p.append("data.files and data.task_mix.files are both empty: nothing to train on")
    if d.weights and len(d.weights) != len(d.files):
        p.append(f"{name}.weights has {len(d.weights)} entries for {len(d.files)} files")
    if d.langs and len(d.langs) != len(d.files):
        p.append(f"{name}.langs has {len(d.langs)} entries for {len(d.files)} files")
    if d.langs and any(d.langs) and d.format != "llava":
        p.append(f"{name}.langs picks a language of parallel LLaVA files; {name}.format={d.format!r} files hold "
                 "one language each (pack one language, or leave langs empty)")
    if config.stage == 0 and d.format not in TEXT_FORMATS and d.files:
        p.append(f"stage=0 is causal-LM pretraining: {name}.format must be {_either(TEXT_FORMATS)}, got {d.format!r}")
    if config.stage in (1, 2) and d.format in TEXT_FORMATS:
        p.append(f"stage={config.stage} trains on conversations: {name}.format must be "
                 f"{_either(CONVERSATION_FORMATS)}, got {d.format!r}")
    try:
        get_template(d.template)
    except Exception as e:  # noqa: BLE001 - the template registry names the problem
        p.append(f"{name}.template={d.template!r}: {e}")
    if d.pack and d.group_by_length:
        p.append(f"{name}.pack=True with {name}.group_by_length=True: length grouping is for unpacked batches")
    if d.pack and d.format == "llava" and not _starts_untrained(d.template):
        p.append(f"{name}.pack=True with template {d.template!r}: its samples do not start with an untrained "
                 "token (BOS), so the shifted loss would predict across packed samples; packing supports "
                 "text and templates beginning with BOS (plain, vicuna_v1, llava_llama_2)")
    if d.max_images_per_row < 1 and config.stage in (1, 2):
        p.append(f"{name}.max_images_per_row={d.max_images_per_row}: stage {config.stage} needs >= 1")
    if d.max_len < 2:
        p.append(f"{name}.max_len={d.max_len} is too short")
    return p


def _model_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Execution settings."""
    m, p = config.model, []
    for field in ("dtype", "param_dtype"):
        if m[field] not in DTYPES:
            p.append(f"model.{field}={m[field]!r}; expected one of {sorted(DTYPES)}")
    if m.frozen_dtype not in ("", *DTYPES):
        p.append(f"model.frozen_dtype={m.frozen_dtype!r}; expected '' (= param_dtype) or one of {sorted(DTYPES)}")
    if m.attention not in ATTENTION_IMPLEMENTATIONS:
        p.append(f"model.attention={m.attention!r}; expected one of {ATTENTION_IMPLEMENTATIONS}")
    if m.attention == "cudnn" and m.dtype == "float32":
        p.append("model.attention='cudnn' needs model.dtype bfloat16 or float16")
    try:
        remat_policy(m.remat_policy)
    except ValueError as e:
        p.append(f"model.{e}")
    return p


def _batch_problems(config: ml_collections.ConfigDict, num_devices: int, num_processes: int) -> list[str]:
    """Mesh against devices, batch against mesh, accumulation and processes."""
    p = []
    data, fsdp, tensor = mesh_size(config, num_devices)
    if 0 in (data, fsdp, tensor) or data * fsdp * tensor != num_devices:
        p.append(f"mesh data={config.mesh.data} x fsdp={config.mesh.fsdp} x tensor={config.mesh.tensor} does "
                 f"not divide the {num_devices} devices")
        return p
    b, accum = config.train.batch_size, config.train.grad_accum
    if accum < 1 or b % accum:
        p.append(f"train.batch_size={b} is not divisible by train.grad_accum={accum}")
    elif (b // accum) % (data * fsdp):
        p.append(f"microbatch train.batch_size/grad_accum={b // accum} is not divisible by the batch-sharding "
                 f"mesh axes data*fsdp={data * fsdp}")
    if b % num_processes:
        p.append(f"train.batch_size={b} is not divisible by the {num_processes} processes")
    eb = config.eval.batch_size or b
    if config.eval.every_steps and eb % (data * fsdp):
        p.append(f"eval.batch_size={eb} is not divisible by data*fsdp={data * fsdp}")
    return p


def _schedule_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Optimizer, schedule and cadences."""
    o, p = config.optim, []
    if o.lr <= 0:
        p.append(f"optim.lr={o.lr} must be > 0")
    if not 0 <= o.warmup_ratio < 1:
        p.append(f"optim.warmup_ratio={o.warmup_ratio} must be in [0, 1)")
    if o.weight_decay < 0 or o.clip_norm < 0:
        p.append(f"optim.weight_decay={o.weight_decay} and optim.clip_norm={o.clip_norm} must be >= 0")
    if config.train.num_steps <= 0 and config.train.num_epochs <= 0:
        p.append("train.num_steps and train.num_epochs are both <= 0")
    if config.checkpoint.keep < 1 or config.checkpoint.every_steps < 1:
        p.append(f"checkpoint.keep={config.checkpoint.keep} and checkpoint.every_steps="
                 f"{config.checkpoint.every_steps} must be >= 1")
    if config.log.every_steps < 1:
        p.append(f"log.every_steps={config.log.every_steps} must be >= 1")
    if config.train.consistency_weight < 0:
        p.append(f"train.consistency_weight={config.train.consistency_weight} must be >= 0")
    if config.train.consistency_weight > 0 and config.stage not in (1, 2):
        p.append(f"train.consistency_weight > 0 needs images: stage {config.stage} has none")
    if config.train.max_nonfinite < 1:
        p.append(f"train.max_nonfinite={config.train.max_nonfinite} must be >= 1")
    if config.train.sigterm_check_steps < 1:
        p.append(f"train.sigterm_check_steps={config.train.sigterm_check_steps} must be >= 1")
    return p


def numeric_warnings(config: ml_collections.ConfigDict) -> list[str]:
    """Settings that train, but not as LLaVA's fp32-master mixed precision does (logged at start-up)."""
    m, w = config.model, []
    if m.dtype == "float16":
        w.append("model.dtype='float16' without loss scaling (none is implemented): small gradients underflow "
                 "to zero; use bfloat16")
    if m.param_dtype == "bfloat16":
        w.append("model.param_dtype='bfloat16' keeps no float32 master copy: updates smaller than ~1/256 of a "
                 "weight are lost (LLaVA trains bf16 compute on fp32 master weights)")
    return w


def problems(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> list[str]:
    """Every inconsistency of one stage config (empty when it is fine)."""
    p = _stage_problems(config) + _data_problems(config) + _model_problems(config)
    p += _batch_problems(config, num_devices, num_processes) + _schedule_problems(config)
    if config.eval.every_steps and config.eval_data.files:
        p += _data_problems(config, "eval_data")
    return p


def missing_paths(config: ml_collections.ConfigDict) -> list[str]:
    """The local init paths of a stage config that do not exist (cloud paths are not checked)."""
    keys = {"hf": ("llama_dir", "clip_dir"), "hf_llava": ("llava_dir",), "hf_llama": ("llama_dir",),
            "checkpoint": ("checkpoint",)}.get(config.init.source, ())
    return [f"init.{k}={config.init[k]!r} does not exist" for k in keys
            if config.init[k] and "://" not in config.init[k] and not os.path.exists(config.init[k])]


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None, num_processes: int | None = None,
             in_stage_list: bool = False, check_paths: bool = False) -> None:
    """Raise ConfigError naming every inconsistent setting of a stage config (or of each stage of a list);
    `check_paths`: also that the init paths exist (at run time, so that nothing starts before)."""
    import jax
    num_devices = num_devices or jax.device_count()
    num_processes = num_processes or jax.process_count()
    schema = run_schema_problems(config) if not in_stage_list else _stage_schema_problems(config)
    if schema:  # the other checks read the settings the schema defines
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(schema))
    if config.stages:
        found = []
        for i, name in enumerate(config.stages):
            if name not in config:
                found.append(f"stages lists {name!r} but the config has no such sub-config")
                continue
            if config[name].init.source == "previous" and i == 0:
                found.append(f"{name}: init.source='previous' in the first stage of the list")
            found += [f"{name}: {e}" for e in problems(config[name], num_devices, num_processes)]
            found += [f"{name}: {e}" for e in (missing_paths(config[name]) if check_paths else [])]
    else:
        found = problems(config, num_devices, num_processes) + (missing_paths(config) if check_paths else [])
        if config.init.source == "previous" and not in_stage_list:
            found.append("init.source='previous' is only for stages of a stage list (config.stages)")
    for stage in [config[n] for n in config.stages if n in config] if config.stages else [config]:
        for warning in numeric_warnings(stage):
            log.warning(warning)
    if found:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(found))
