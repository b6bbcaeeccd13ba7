"""Package definition for xllava-jax."""

from setuptools import find_packages, setup

setup(
    name="xllava-jax",
    version="0.1.0",
    description="Multilingual LLaVA-style vision-language models (X-LLaVA, LRM-LLaVA) in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["xllava_jax", "xllava_jax.*"]),
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "transformers>=5.23.0",
        "grain>=0.2.18",
        "array-record>=0.8.6",
        "sentencepiece>=0.2.3",
        "tensorflow-datasets>=4.9.10",
        "pillow>=13.0.0",
        "ml-collections>=1.1.0",
        "safetensors>=0.8.0",
        "ml-dtypes>=0.7.0",  # bfloat16 NumPy views of memory-mapped safetensors
        "numpy>=2.4",
        "tqdm>=4.70",
        "protobuf>=7.36",
        "sacrebleu>=2.6.0",
        "matplotlib>=3.11.2",
        "tensorboardX>=2.6.5",
        "starlette>=1.10.0",  # python -m xllava_jax.serve: the HTTP app
        "uvicorn>=0.55.0",  # ... and its ASGI server
        "httpx>=0.29.0",  # ... fetching http(s) image URLs
    ],
    package_data={"xllava_jax.serve": ["page.html"], "xllava_jax.models": ["cpu_kernels.cc"]},
    extras_require={
        "cuda": ["jax[cuda12]>=0.10.2"],
        # libtpu: TPU runtime, and the compiler python -m xllava_jax.aot uses on CPU-only machines (~210 MB wheel;
        # CI installs it so tests/test_aot.py compiles for TPU topologies; those tests skip without it)
        "tpu": ["jax[tpu]>=0.10.2"],
        # openai: the serving tests talk to the server with the official client
        "test": ["pytest>=9.2", "torch==2.13.0", "openai>=3.63.0"],
    },
)
