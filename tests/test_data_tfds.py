"""TfdsTextSource over a TFDS dataset built here: a tiny GeneratorBasedBuilder over generated en/ko/zh text,
prepared as ArrayRecord into a tmp data_dir (no download, no TensorFlow)."""

import pickle

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from xllava_jax.data.tfds_source import TfdsTextSource  # noqa: E402

LINES = {"train": [f"line {i}: a red circle / 빨간 원 {i} / 红色圆形 {i}" for i in range(7)],
         "validation": ["held out 0", "held out 1 에 있습니다", "验证"]}


class XllavaTinyText(tfds.core.GeneratorBasedBuilder):
    """Generated text in two splits, with a `text` feature (as wikipedia's) and a second one."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "title": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in LINES}

    def _generate_examples(self, split):
        for i, line in enumerate(LINES[split]):
            yield i, {"text": line, "title": f"{split} {i}"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    XllavaTinyText(data_dir=str(path), file_format="array_record").download_and_prepare()
    return str(path)


def test_records_are_id_and_decoded_text(data_dir):
    src = TfdsTextSource("xllava_tiny_text", "train", data_dir)
    assert len(src) == len(LINES["train"])
    records = [src[i] for i in range(len(src))]
    assert [r["id"] for r in records] == [f"xllava_tiny_text/train:{i}" for i in range(len(src))]
    assert all(isinstance(r["text"], str) for r in records)
    assert sorted(r["text"] for r in records) == sorted(LINES["train"])  # UTF-8 decoded, ko/zh intact
    assert src[3] == records[3]  # random access is stable


def test_split_and_text_key(data_dir):
    val = TfdsTextSource("xllava_tiny_text", "validation", data_dir)
    assert sorted(val[i]["text"] for i in range(len(val))) == sorted(LINES["validation"])
    titles = TfdsTextSource("xllava_tiny_text", "validation", data_dir, text_key="title")
    assert sorted(titles[i]["text"] for i in range(len(titles))) == [f"validation {i}" for i in range(3)]


def test_pickles_by_arguments_for_grain_workers(data_dir):
    src = TfdsTextSource("xllava_tiny_text", "train", data_dir)
    assert pickle.loads(pickle.dumps(src)).__getstate__() == {"args": ("xllava_tiny_text", "train", data_dir, "text")}
    copy = pickle.loads(pickle.dumps(src))
    assert len(copy) == len(src) and [copy[i] for i in range(len(src))] == [src[i] for i in range(len(src))]


def test_unknown_dataset_is_an_error(data_dir):
    with pytest.raises(Exception, match="no_such_text"):
        TfdsTextSource("no_such_text", "train", data_dir)
