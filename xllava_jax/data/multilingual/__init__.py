"""LRM-LLaVA multilingual task instructions built from parallel records: MVQA (mvqa.py), EP-VQA (ep_vqa.py),
BVQA (bvqa.py), their phrasings (phrasings.py) and the seeded language/task mix (mix.py)."""

from xllava_jax.data.multilingual.bvqa import build_bvqa
from xllava_jax.data.multilingual.ep_vqa import build_ep_vqa
from xllava_jax.data.multilingual.mix import TaskMixConfig, build_task_mix, format_mix_summary
from xllava_jax.data.multilingual.mvqa import build_mvqa

__all__ = ["build_mvqa", "build_ep_vqa", "build_bvqa", "TaskMixConfig", "build_task_mix", "format_mix_summary"]
