"""Loading a model for inference: an Orbax checkpoint (or training workdir) or a Hugging Face
directory, and the tokenizer that goes with it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jax.sharding import Mesh

from xllava_jax.convert.hf import load_hf_llama, load_hf_llava, placement, read_config_json
from xllava_jax.models.llama import Llama, LlamaConfig
from xllava_jax.models.llava import Llava, LlavaConfig
from xllava_jax.models.params import build_model, with_towers
from xllava_jax.tokenizer.spm import Tokenizer, load_tokenizer
from xllava_jax import checkpoint as ckpt
from xllava_jax.checkpoint import load_config, load_params


def is_hf_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a transformers model directory (has config.json)."""
    return (Path(path) / "config.json").is_file()


def inference_config(cfg: LlavaConfig | LlamaConfig, dtype: str | None = None) -> LlavaConfig | LlamaConfig:
    """The config an inference model runs: compute `dtype` (if given) and the CPU bf16 matvec decode path."""
    return with_towers(cfg, cpu_matvec=True, **({"dtype": dtype} if dtype else {}))


def load_model(checkpoint: str | os.PathLike, *, dtype: str | None = None, mesh: Mesh | None = None,
               mapped: bool = True) -> tuple[Llava | Llama, Any]:
    """(model, params) of an Orbax checkpoint / training workdir (latest step) or an HF LLaVA or LLaMA directory.

    `dtype` sets the compute dtype (params keep their stored dtype). Params are device arrays, streamed one
    tensor at a time to their training shardings on `mesh`, or to the first local device without one. Without a
    mesh and with bf16 compute, an HF directory's bf16 Linear weights stay in the mapped files, read in place
    (cpu_kernels.MappedKernel; on CPUs with AVX512-BF16; `mapped`=False copies them): nothing is copied, as in
    transformers' own loading.
    """
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if is_hf_dir(checkpoint):
        model_type = read_config_json(checkpoint)["model_type"]
        loaders = {"llava": load_hf_llava, "llama": load_hf_llama}
        if model_type not in loaders:
            raise ValueError(f"{checkpoint}/config.json has model_type {model_type!r}; expected 'llava' or 'llama'")
        in_place = mapped and mesh is None and dtype == "bfloat16"
        model, params = loaders[model_type](checkpoint, placement(mesh), mapped=in_place)
        cfg = model.cfg
    else:
        cfg, params = load_params(checkpoint, placement(mesh)(load_config(checkpoint)))
    return build_model(inference_config(cfg, dtype)), params


def load_tokenizer_for(checkpoint: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> Tokenizer:
    """`tokenizer` (tokenizer.model or HF tokenizer dir), else the one inside the checkpoint directory."""
    if tokenizer is not None:
        if not os.path.exists(tokenizer):
            raise FileNotFoundError(f"tokenizer {tokenizer} does not exist")
        return load_tokenizer(tokenizer)
    carried = ckpt.carried_tokenizer(checkpoint)
    if carried is not None:
        return load_tokenizer(carried)
    raise FileNotFoundError(f"checkpoint {checkpoint} carries no tokenizer.model; pass --tokenizer "
                            "(a tokenizer.model file or a Hugging Face tokenizer directory)")
