"""Training configs reach every record source through data.format: `data pack`'s ArrayRecord shards
('arrayrecord') and TFDS text datasets ('tfds'), besides LLaVA JSON and text files."""

import math

import numpy as np
import pytest

from xllava_jax.data import formats
from xllava_jax.data.arrayrecord import write_shards
from xllava_jax.tokenizer.spm import load_tokenizer
from xllava_jax.train import inputs
from xllava_jax.train.initialize import random_config
from xllava_jax.train.loop import run_stage
from xllava_jax.train.validate import ConfigError, validate
from train_helpers import demo_stage_config, losses


@pytest.mark.slow
def test_training_from_packed_shards(tmp_path, demo_data_root):
    records = formats.load_llava(demo_data_root / "captions.jsonl", image_root=str(demo_data_root), lang="en")
    write_shards(records, tmp_path / "packed", num_shards=1)  # what `python -m xllava_jax.data pack` writes
    from_json = demo_stage_config(1, str(demo_data_root), steps=2)
    from_json.init.source = "random"
    from_json.data.update(files=("captions.jsonl",), langs=("en",))
    packed = from_json.copy_and_resolve_references()
    packed.data.update(format="arrayrecord", files=(str(tmp_path / "packed"),), langs=())
    validate(packed, num_devices=1)

    tok = load_tokenizer(packed.tokenizer)
    cfg = random_config(packed, tok)
    a, b = inputs.load_records(from_json.data, 0), inputs.load_records(packed.data, 0)
    assert len(a) == len(b) == len(records)
    batches = [next(inputs.make_iterator(c.data, src, tok, cfg, 8, 0, shuffle=False))
               for c, src in ((from_json, a), (packed, b))]
    for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
        np.testing.assert_array_equal(batches[0][key], batches[1][key])  # inline image bytes = the files

    packed.checkpoint.update(every_steps=2, async_save=False)
    result = run_stage(packed, tmp_path / "run")
    assert result["step"] == 2 and result["data"]["kept"] > 0
    assert all(math.isfinite(v) for v in losses(tmp_path / "run").values())


@pytest.mark.slow
def test_training_from_a_tfds_dataset(tmp_path, demo_data_root):
    from test_data_tfds import LINES, XllavaTinyText

    data_dir = tmp_path / "tfds"
    XllavaTinyText(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    c = demo_stage_config(0, str(demo_data_root), steps=2)
    c.init.source = "random"
    c.data.update(format="tfds", files=("xllava_tiny_text:train",), root=str(data_dir), max_len=32)
    c.train.batch_size = 4
    c.checkpoint.update(every_steps=2, async_save=False)
    validate(c, num_devices=1)
    source = inputs.load_records(c.data, 0)
    assert sorted(source[i]["text"] for i in range(len(source))) == sorted(LINES["train"])

    result = run_stage(c, tmp_path / "run")
    assert result["step"] == 2
    assert all(math.isfinite(v) for v in losses(tmp_path / "run").values())


def test_source_formats_fit_their_stages(demo_data_root):
    c = demo_stage_config(1, str(demo_data_root))
    c.init.source = "random"
    c.data.update(format="tfds", files=("xllava_tiny_text",), langs=())
    with pytest.raises(ConfigError, match="stage=1 trains on conversations: data.format must be 'llava' or "
                                          "'arrayrecord', got 'tfds'"):
        validate(c, num_devices=1)
    c.data.update(format="arrayrecord", langs=("en",))
    with pytest.raises(ConfigError, match="data.langs picks a language of parallel LLaVA files"):
        validate(c, num_devices=1)
