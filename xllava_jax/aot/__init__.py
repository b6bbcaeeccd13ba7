"""Ahead-of-time compiles for a Cloud TPU topology on a machine without a TPU (libtpu's compiler;
`pip install -e .[tpu]`): `python -m xllava_jax.aot` (aot/__main__.py) compiles a config's training step, or
the inference engine's own prefill and decode programs, and reports per-chip memory, FLOPs and estimates.

  chips.py    the TPU generations, topology names and libtpu's devices
  sizing.py   abstract inputs and per-device bytes of the programs
  cost.py     FLOP counts (extrapolated from unrolled 1-2 layer compiles) and step-time / MFU estimates
  compile.py  the programs: the stage's train step (train.harness) and infer.generate's prefill and decode
"""
