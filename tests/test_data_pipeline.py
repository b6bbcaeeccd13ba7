"""Sequences, grain pipeline (resume, sharding, determinism, workers), mixtures, ArrayRecord packing."""

import json
import subprocess
import sys

import numpy as np
import pytest

from xllava_jax.data import formats, pipeline, sequences
from xllava_jax.data.arrayrecord import ArrayRecordSource
from xllava_jax.data.labels import IGNORE_INDEX
from xllava_jax.data.length_grouping import length_grouped_order
from xllava_jax.data.mixture import Mixture
from xllava_jax.data.processing import SampleProcessor
from xllava_jax.tokenizer.spm import load_tokenizer
from xllava_jax.train.forward import row_slots

N_IMG, S = 8, 28


@pytest.fixture(scope="module")
def setup(spm_model_path, llava_dataset):
    tok = load_tokenizer(spm_model_path)
    records = formats.load_llava(llava_dataset, image_root=str(llava_dataset.parent))
    proc = SampleProcessor(tok, "vicuna_v1", max_len=160, num_image_tokens=N_IMG, image_size=S)
    return tok, records, proc


def spec(tok, pack=False, bs=3):
    return pipeline.BatchSpec(batch_size=bs, max_len=160, pad_id=tok.pad_id, pack=pack,
                              max_images_per_row=3 if pack else 1, image_shape=(S, S, 3))


def batches(it, n):
    return [next(it) for _ in range(n)]


def same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


@pytest.mark.parametrize("pack", [False, True])
def test_resume_mid_epoch_yields_same_next_batches(setup, pack):
    tok, records, proc = setup
    it = iter(pipeline.make_pipeline(records, proc, spec(tok, pack), seed=3, num_epochs=2))
    batches(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # checkpoints store it as JSON
    expected = batches(it, 4)
    it2 = iter(pipeline.make_pipeline(records, proc, spec(tok, pack), seed=3, num_epochs=2))
    it2.set_state(state)
    assert same(batches(it2, 4), expected)


@pytest.mark.slow
def test_resume_with_worker_processes(setup):
    tok, records, proc = setup
    it = iter(pipeline.make_pipeline(records, proc, spec(tok, True), seed=1, num_workers=2))
    batches(it, 2)
    state = it.get_state()
    expected = batches(it, 2)
    it2 = iter(pipeline.make_pipeline(records, proc, spec(tok, True), seed=1, num_workers=2))
    it2.set_state(state)
    assert same(batches(it2, 2), expected)


def test_seeded_order_and_epochs(setup):
    tok, records, _ = setup
    order = lambda seed: [r["id"] for r in pipeline.record_dataset(records, seed=seed, num_epochs=2,  # noqa: E731
                                                                    shard_index=0, shard_count=1)]
    a, b = order(0), order(0)
    assert a == b and a != order(1)
    assert sorted(a[:24]) == sorted(r["id"] for r in records) and a[:24] != a[24:]


def test_shards_partition_the_data(setup):
    _, records, _ = setup
    shards = [[r["id"] for r in pipeline.record_dataset(records, seed=5, shard_index=i, shard_count=3)]
              for i in range(3)]
    flat = [x for s in shards for x in s]
    assert len(flat) == len(set(flat)) == len(records)


@pytest.mark.parametrize("count", [2, 3])
def test_global_batches_do_not_depend_on_the_number_of_processes(setup, count):
    """Process i's rows of batch b are rows [i*B/P, (i+1)*B/P) of the one-process batch b, over epochs."""
    tok, records, proc = setup
    rows = 2
    one = iter(pipeline.make_pipeline(records, proc, spec(tok, bs=rows * count), seed=3, num_epochs=None,
                                      shard_index=0, shard_count=1))
    shards = [iter(pipeline.make_pipeline(records, proc, spec(tok, bs=rows), seed=3, num_epochs=None,
                                          shard_index=i, shard_count=count)) for i in range(count)]
    for _ in range(2 * len(records) // (rows * count)):  # two epochs
        whole, parts = next(one), [next(it) for it in shards]
        for key in ("input_ids", "labels", "attention_mask"):
            np.testing.assert_array_equal(whole[key], np.concatenate([part[key] for part in parts]))
        per_row = lambda b: row_slots(b["input_ids"], b["pixel_values"], tok.image_token_id, N_IMG, 1)  # noqa: E731
        np.testing.assert_array_equal(per_row(whole), np.concatenate([per_row(part) for part in parts]))


def test_batch_contract_with_packing(setup):
    tok, records, proc = setup
    text_only = [r for r in records if not r["image"]][:1]
    with_img = [r for r in records if r["image"]][:3]
    sp = spec(tok, pack=True, bs=2)
    sp.max_len, sp.drop_remainder = 400, False
    it = iter(pipeline.make_pipeline(text_only + with_img, proc, sp, shuffle=False))
    b = next(it)
    assert b["input_ids"].dtype == np.int32 and b["pixel_values"].shape == (2 * 3, S, S, 3)
    row = 0
    segs = b["segment_ids"][row]
    k = segs.max()
    assert k >= 2 and set(np.unique(segs)) == set(range(k + 1))
    for s in range(1, k + 1):
        pos = b["positions"][row][segs == s]
        assert np.array_equal(pos, np.arange(len(pos)))
    assert np.array_equal(b["attention_mask"], (b["segment_ids"] > 0).astype(np.int32))
    assert np.all(b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX)
    # images in reading order: the first image-token run belongs to the first image record
    n_runs = int((b["input_ids"] == tok.image_token_id).sum() // N_IMG)
    assert n_runs == 3 and np.abs(b["pixel_values"][:n_runs]).sum(axis=(1, 2, 3)).min() > 0
    assert np.all(b["pixel_values"][n_runs:] == 0)
    expected = proc(with_img[0])["pixel_values"][0]
    assert np.array_equal(b["pixel_values"][0], expected)


def test_truncation_never_cuts_an_image_run():
    ids = [1, 2, 9, 9, 9, 3, 4, 5]
    labels = list(ids)
    assert sequences.truncate(ids, labels, 3, 9) is None
    assert sequences.truncate(ids, labels, 2, 9) == (ids[:2], labels[:2])
    assert sequences.truncate(ids, labels, 6, 9) == (ids[:6], labels[:6])


def test_truncated_and_dropped_are_counted(spm_model_path, llava_dataset):
    tok = load_tokenizer(spm_model_path)
    records = formats.load_llava(llava_dataset, image_root=str(llava_dataset.parent))
    proc = SampleProcessor(tok, "vicuna_v1", max_len=60, num_image_tokens=30, image_size=S)
    stats = pipeline.DataStats()
    sp = pipeline.BatchSpec(1, 60, tok.pad_id, image_shape=(S, S, 3))
    list(pipeline.make_pipeline(records, proc, sp, stats=stats))
    # the system prompt and 30 image tokens fill 60 before any answer: every image record's run is cut;
    # some text-only records lose their whole answer to truncation: each kind is counted under its own name
    with_image = sum(1 for r in records if r.get("image"))
    assert 0 < with_image < len(records)
    assert stats.skipped["image_run_cut_by_truncation"] == with_image
    assert 0 < stats.skipped["no_trained_tokens"] <= len(records) - with_image
    assert stats.kept + sum(stats.skipped.values()) == len(records)


def test_no_usable_record_raises_instead_of_looping(spm_model_path, llava_dataset):
    """Every record too long for max_len: the repeating training iterator raises, naming the reason."""
    tok = load_tokenizer(spm_model_path)
    records = formats.load_llava(llava_dataset, image_root=str(llava_dataset.parent))
    proc = SampleProcessor(tok, "vicuna_v1", max_len=20, num_image_tokens=30, image_size=S)
    sp = pipeline.BatchSpec(2, 20, tok.pad_id, image_shape=(S, S, 3))
    it = iter(pipeline.make_pipeline(records, proc, sp, num_epochs=None))
    with pytest.raises(pipeline.DataError, match=r"(no_trained_tokens|image_run_cut_by_truncation).*raise max_len"):
        next(it)


def test_length_grouping_keeps_modalities_apart():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, 64)
    mm = np.arange(64) % 2 == 0
    order = length_grouped_order(lengths, mm, 8, rng)
    assert sorted(order) == list(range(64))
    for c in range(0, 48, 8):  # 3 + 3 full batches; each modality's last batch goes into the final mixed pair
        chunk = order[c:c + 8]
        assert len(set(mm[chunk])) == 1 and list(lengths[chunk]) == sorted(lengths[chunk], reverse=True)
    assert list(order[48:]) == sorted(order[48:])


def test_mixture_weights_and_coverage():
    a, b = [("a", i) for i in range(10)], [("b", i) for i in range(40)]
    m = Mixture([a, b], weights=[0.5, 0.5])
    assert m.counts() == [40, 40] and {m[i] for i in range(len(m))} >= set(a) | set(b)
    first = [m[i][0] for i in range(8)]
    assert first.count("a") == 4
    assert len(Mixture([a, b])) == 50


def test_pack_cli_then_pipeline_reads_arrayrecord(setup, llava_dataset, tmp_path):
    tok, records, proc = setup
    out = subprocess.run([sys.executable, "-m", "xllava_jax.data", "pack", "--data", str(llava_dataset),
                          "--image_root", str(llava_dataset.parent), "--out", str(tmp_path / "ar"),
                          "--num_shards", "2"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1])["kept"] == len(records)
    source = ArrayRecordSource(str(tmp_path / "ar"))
    assert len(source) == len(records)
    by_id = {source[i]["id"]: source[i] for i in range(len(source))}
    for r in records:
        ex_json, ex_ar = proc(r), proc(by_id[r["id"]])
        assert np.array_equal(ex_json["input_ids"], ex_ar["input_ids"])
        if "pixel_values" in ex_json:
            assert np.array_equal(ex_json["pixel_values"], ex_ar["pixel_values"])
    assert next(iter(pipeline.make_pipeline(source, proc, spec(tok))))["input_ids"].shape == (3, 160)
