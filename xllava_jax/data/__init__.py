"""Data: formats, conversation templates, labels, CLIP images, sequences/packing, grain pipelines,
multilingual (LRM-LLaVA) task instructions, mixtures, ArrayRecord packing, CLIs. See README "Data formats".

The names below load their submodule on first use (PEP 562), so importing a light submodule such as
`xllava_jax.data.labels` (the train step's IGNORE_INDEX) does not pull grain in: the GPU image has none.
"""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "formats": ("load_llava", "load_parallel", "load_text"),
    "images": ("preprocess",),
    "labels": ("IGNORE_INDEX", "encode_conversation", "encode_prompt", "encode_text_document"),
    "pipeline": ("BatchSpec", "make_pipeline"),
    "processing": ("SampleProcessor",),
    "report": ("DataError", "DataStats"),
    "templates": ("get_template", "register_template"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """The public name `name`, imported from its submodule on first access."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
