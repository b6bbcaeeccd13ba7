"""Data: formats, conversation templates, labels, CLIP images, sequences/packing, grain pipelines,
multilingual (LRM-LLaVA) task instructions, mixtures, ArrayRecord packing, CLIs. See README "Data formats"."""

from xllava_jax.data.formats import load_llava, load_parallel, load_text
from xllava_jax.data.images import preprocess
from xllava_jax.data.labels import IGNORE_INDEX, encode_conversation, encode_prompt, encode_text_document
from xllava_jax.data.pipeline import BatchSpec, make_pipeline
from xllava_jax.data.processing import SampleProcessor
from xllava_jax.data.report import DataError, DataStats
from xllava_jax.data.templates import get_template, register_template

__all__ = ["load_llava", "load_parallel", "load_text", "preprocess", "IGNORE_INDEX", "encode_conversation",
           "encode_prompt", "encode_text_document", "BatchSpec", "make_pipeline", "SampleProcessor", "DataError",
           "DataStats", "get_template", "register_template"]
