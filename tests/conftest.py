"""Shared pytest fixtures and test setup."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))


# ---- fake OpenAI-compatible server and Visual Genome fixtures (datagen / judge tests) ----

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FAKE_API_KEY = "sk-fake-DO-NOT-LEAK-7f3a9c1e5b"


@pytest.fixture
def fake_openai():
    """Factory: ``fake_openai(faults=Faults(...), seed=0)`` starts a local server; all are stopped at teardown."""
    from fake_openai import FakeOpenAI

    servers = []

    def make(faults=None, seed: int = 0, max_requests: int = 2000):
        server = FakeOpenAI(FAKE_API_KEY, faults, seed, max_requests)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def fake_api_env(monkeypatch):
    """Function ``fake_api_env(server)`` that points OPENAI_* variables at a fake server (fast retries)."""
    def apply(server, **extra: str):
        env = {"OPENAI_BASE_URL": server.url, "OPENAI_MODEL": "fake-gpt-4v", "OPENAI_API_KEY": FAKE_API_KEY,
               "OPENAI_TIMEOUT_S": "0.5", "OPENAI_BACKOFF_BASE_S": "0.01", "OPENAI_BACKOFF_MAX_S": "0.05",
               "OPENAI_MAX_RETRIES": "8", **extra}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return env
    return apply


def write_vg_dataset(root: Path, num_images: int = 12) -> dict[str, Path]:
    """Tiny Visual Genome metadata + JPEGs; image i has 1 + (i % 6) main objects plus tiny ones."""
    import json

    from PIL import Image

    (root / "VG_100K").mkdir(parents=True, exist_ok=True)
    names = ["cup", "plate", "bread", "knife", "table", "chair", "lamp", "window"]
    objects, image_data = [], []
    for i in range(1, num_images + 1):
        w, h = 64, 48
        Image.new("RGB", (w, h), (10 * i % 255, 80, 120)).save(root / "VG_100K" / f"{i}.jpg")
        image_data.append({"image_id": i, "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{i}.jpg",
                           "width": w, "height": h, "coco_id": None, "flickr_id": None})
        m = 1 + (i % 6)
        objs = [{"object_id": i * 100 + k, "x": k, "y": k, "w": 20 + k, "h": 20, "names": [names[k]]}
                for k in range(m)]
        objs.append({"object_id": i * 100 + 50, "x": 0, "y": 0, "w": 1, "h": 1, "names": ["speck"]})
        objs.append({"object_id": i * 100 + 51, "x": 5, "y": 5, "w": 10, "h": 10, "names": [names[0].upper()]})
        objects.append({"image_id": i, "objects": objs})
    (root / "objects.json").write_text(json.dumps(objects))
    (root / "image_data.json").write_text(json.dumps(image_data))
    return {"root": root, "objects": root / "objects.json", "image_data": root / "image_data.json"}


@pytest.fixture
def vg_dataset(tmp_path) -> dict[str, Path]:
    """Paths of a tiny Visual Genome-like dataset under tmp_path/vg."""
    return write_vg_dataset(tmp_path / "vg")


# ---- tokenizer / data fixtures (data pipeline tests; helpers in data_fixtures.py) ----

from data_fixtures import (make_parallel_records, save_hf_llama_tokenizer,  # noqa: E402,F401
                           train_llama_style_spm, write_llava_dataset)


@pytest.fixture(scope="session")
def spm_model_path(tmp_path_factory) -> Path:
    """Path to a tiny LLaMA-style SentencePiece `tokenizer.model` (en/ko/zh, byte fallback, 1000 pieces)."""
    return train_llama_style_spm(tmp_path_factory.mktemp("spm") / "tokenizer")


@pytest.fixture(scope="session")
def hf_llama_tokenizer_dir(spm_model_path, tmp_path_factory) -> Path:
    """A llava-hf style tokenizer directory (tokenizer.model + `<image>`, `<pad>` added tokens) saved by transformers."""
    return save_hf_llama_tokenizer(spm_model_path, tmp_path_factory.mktemp("hf_tok"))


@pytest.fixture(scope="session")
def llava_dataset(tmp_path_factory) -> Path:
    """Path of a small LLaVA-format JSONL (24 records, en/ko/zh, JPEGs under the same directory)."""
    return write_llava_dataset(tmp_path_factory.mktemp("llava_ds"))


# ---- inference / evaluation fixtures (infer and eval tests) ----


@pytest.fixture(scope="session")
def tiny_llava_hf_dir(hf_llama_tokenizer_dir, tmp_path_factory) -> Path:
    """A random transformers LLaVA (16 image tokens, 56 px images) whose vocabulary fits the session
    tokenizer (<image> = its image token), saved with the tokenizer files: a complete HF checkpoint."""
    import hf_reference as ref
    from xllava_jax.convert.hf import copy_tokenizer
    from xllava_jax.tokenizer.spm import load_tokenizer

    tok = load_tokenizer(hf_llama_tokenizer_dir)
    path = tmp_path_factory.mktemp("tiny_llava_hf")
    model = ref.llava(seed=21, text={"vocab_size": tok.vocab_size}, image_token_index=tok.image_token_id)
    model.config.pad_token_id = tok.pad_id
    model.save_pretrained(path)
    copy_tokenizer(hf_llama_tokenizer_dir, path)
    return path


@pytest.fixture(scope="session")
def question_set(tmp_path_factory) -> dict[str, Path]:
    """LLaVA question JSONL (en/ko/zh, one text-only question) and its PNG images: {"questions", "image_root"}."""
    import json

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("questions")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    texts = ["What is in the picture?", "사진에 무엇이 있습니까?", "图片里有什么？", "Describe the colors.", "Hello?"]
    lines = []
    for i, text in enumerate(texts):
        rec = {"question_id": f"q{i}", "text": text}
        if i < 4:
            Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
            rec["image"] = f"img/{i}.png"
        lines.append(json.dumps(rec, ensure_ascii=False))
    (root / "questions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"questions": root / "questions.jsonl", "image_root": root}


# ---- training fixtures (tests/test_train_*.py; helpers in train_helpers.py) ----

@pytest.fixture(scope="session")
def demo_data_root(tmp_path_factory) -> Path:
    """A small synthetic demo dataset (120 training scenes) with its tokenizers (tokenizer_en/, expanded tokenizer/)."""
    from xllava_jax import demo

    root = tmp_path_factory.mktemp("demo_data")
    demo.prepare(root, num_train=120, num_eval=6)
    return root


@pytest.fixture(scope="session")
def train_subprocess_env(tmp_path_factory) -> dict:
    """Environment for training subprocesses: CPU, and one persistent XLA cache so repeated runs compile once."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)
    return env
