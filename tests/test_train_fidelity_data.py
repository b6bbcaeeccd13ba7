"""The data path as LLaVA / LM pretraining run it: an epoch with packing is each record once, long text documents
are split (not cut), the LLaVA-1.5 recipes pre-process images as pretrain.sh / finetune.sh do."""

import dataclasses

import numpy as np
import pytest

from xllava_jax.data.labels import IGNORE_INDEX
from xllava_jax.data.pipeline import BatchSpec, make_pipeline
from xllava_jax.data.processing import SampleProcessor
from xllava_jax.data.sequences import split_document
from xllava_jax.models import LlamaConfig
from xllava_jax.train import inputs
from xllava_jax.train.defaults import base_config, llava15_recipe


@dataclasses.dataclass
class WordTokenizer:
    """One id per whitespace word (w<n> -> 3 + n): enough of the Tokenizer interface for text records."""

    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0
    image_token_id: int = 127

    def encode_plain(self, text: str) -> list[int]:
        return [3 + int(w[1:]) % 100 for w in text.split()]


def text_records(n: int, lo: int, hi: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"doc{i}", "text": " ".join(f"w{j}" for j in rng.integers(0, 100, rng.integers(lo, hi + 1)))}
            for i in range(n)]


def stage0_config(batch: int = 4, max_len: int = 64, pack: bool = True):
    c = base_config(0)
    c.data.update(format="text", pack=pack, max_len=max_len)
    c.train.update(batch_size=batch, num_epochs=1.0, num_steps=0)
    return c


def test_packed_epoch_trains_each_record_once():
    # 200 records of 5-30 tokens at max_len 64, batch 4: 50 record-counted steps consumed 644 records (3.2 epochs)
    c, tok, cfg = stage0_config(), WordTokenizer(), LlamaConfig(vocab_size=128)
    source = text_records(200, 3, 28)
    total = inputs.steps_for(c, inputs.rows_per_epoch(c.data, source, tok, cfg, c.train.batch_size, c.seed))
    it = inputs.make_iterator(c.data, source, tok, cfg, c.train.batch_size, c.seed)
    consumed = sum(int(next(it)["num_samples"]) for _ in range(total))
    rows_per_batch_records = 64 // 5 * c.train.batch_size  # at most this many records in the dropped remainder
    assert 200 - rows_per_batch_records <= consumed <= 200, (total, consumed)


def test_unpacked_epoch_still_counts_records():
    c = stage0_config(pack=False)
    c.data.format = "llava"
    assert inputs.rows_per_epoch(c.data, [{}] * 37, WordTokenizer(), LlamaConfig(vocab_size=128), 4, 0) == 37


def test_split_document_pieces_keep_every_token_once():
    ids = [1, *range(3, 303), 2]  # <s>, 300 words, </s>
    labels = [IGNORE_INDEX, *ids[1:]]
    pieces = split_document(ids, labels, 64)
    assert all(len(p) <= 64 for p, _ in pieces) and all(p[0] == 1 and la[0] == IGNORE_INDEX for p, la in pieces)
    body = [t for k, (p, _) in enumerate(pieces) for t in (p if k == 0 else p[1:])]
    assert body == ids
    trained = [t for _, la in pieces for t in la if t != IGNORE_INDEX]
    assert trained == ids[1:]  # every token after the first <s> trained exactly once
    assert all(a == b for p, la in pieces for a, b in zip(p[1:], la[1:]))


def collect(it, n):
    return [next(it) for _ in range(n)]


def test_long_documents_are_split_counted_and_resume_mid_document():
    tok = WordTokenizer()
    records = text_records(6, 150, 200, seed=1)
    spec = BatchSpec(2, 64, tok.pad_id, pack=True)
    processor = SampleProcessor(tok, max_len=64, load_images=False)
    it = iter(make_pipeline(records, processor, spec, seed=0, num_epochs=1, shard_index=0, shard_count=1))
    batches = list(it)
    words = sum(len(r["text"].split()) + 2 for r in records)
    trained = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    # whole documents trained (some tail of the last batch may be dropped); truncation kept 64 of ~177 tokens
    assert trained >= words - len(records) - 2 * 64 and it.stats.tokens_cut == 0
    assert it.stats.tokens == sum(int(b["attention_mask"].sum()) for b in batches)
    truncating = SampleProcessor(tok, max_len=64, load_images=False, split_documents=False)
    cut = list(iter(make_pipeline(records, truncating, spec, seed=0, num_epochs=1, shard_index=0, shard_count=1)))
    assert sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in cut) < words / 2
    # resume from a state taken in the middle of a split document replays the same batches
    it = iter(make_pipeline(records, processor, spec, seed=0, num_epochs=1, shard_index=0, shard_count=1))
    collect(it, 1)
    state = it.get_state()
    assert state["piece"] > 0
    want = collect(it, 3)
    again = iter(make_pipeline(records, processor, spec, seed=0, num_epochs=1, shard_index=0, shard_count=1))
    again.set_state(state)
    for a, b in zip(collect(again, 3), want):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        np.testing.assert_array_equal(a["labels"], b["labels"])


@pytest.mark.parametrize("stage,pad", [(1, False), (2, True)])
def test_llava15_recipes_pad_images_only_in_stage2(stage, pad):
    assert llava15_recipe(stage, "vicuna-7b-v1.5").data.pad_image is pad


def mixture(n: int = 4096, seed: int = 0):
    """A mix665k-like mixture: 70% image conversations (long, varied), 30% text-only (shorter)."""
    rng = np.random.default_rng(seed)
    mm = rng.random(n) < 0.7
    lengths = np.where(mm, rng.lognormal(5.3, 0.6, n), rng.lognormal(4.6, 0.8, n)).astype(int) + 1
    return lengths, mm


def batch_stats(order, lengths, mm, batch, devices):
    """(modality-pure share of full batches, std of image batches' mean length, worst device-total ratio)."""
    full = len(order) // batch - 2  # the last two hold each modality's remainder (LLaVA's mixed final batch)
    pure, means, ratios = 0, [], []
    for b in range(full):
        rows = order[b * batch:(b + 1) * batch]
        pure += len(set(mm[rows])) == 1
        if mm[rows].all():
            means.append(lengths[rows].mean())
        totals = lengths[rows].reshape(devices, -1).sum(axis=1)
        ratios.append(totals.max() / totals.min())
    return pure / full, float(np.std(means)), float(np.max(ratios))


def test_group_by_length_matches_llava_modality_grouping():
    from xllava_jax.data.length_grouping import length_grouped_order
    lengths, mm = mixture()
    batch, devices = 128, 8
    order = length_grouped_order(lengths, mm, batch, np.random.default_rng(1), devices)
    assert sorted(order) == list(range(len(lengths)))
    pure, spread, worst = batch_stats(order, lengths, mm, batch, devices)
    random_spread = lengths[mm].std() / np.sqrt(batch)  # batch means of random image batches
    assert pure == 1.0  # one modality per batch
    assert spread < 1.5 * random_spread, (spread, random_spread)  # no long-to-short cycling (was ~9x)
    assert worst < 1.1, worst  # lengths spread evenly over the devices (contiguous sorted rows: ~2-5x)


def test_batches_are_padded_to_the_smallest_length_bucket():
    tok = WordTokenizer()
    short, long = text_records(8, 10, 20, seed=3), text_records(2, 100, 110, seed=4)
    spec = BatchSpec(2, 128, tok.pad_id, buckets=(32, 64))
    processor = SampleProcessor(tok, max_len=128, load_images=False)
    for records, want in ((short, 32), (long, 128)):
        for b in make_pipeline(records, processor, spec, seed=0, num_epochs=1, shard_index=0, shard_count=1):
            assert b["input_ids"].shape == (2, want) and b["attention_mask"].sum(axis=1).max() <= want
    c = llava15_recipe(1, "vicuna-7b-v1.5")
    assert inputs.length_buckets(c.data) and max(inputs.length_buckets(c.data)) < c.data.max_len
