"""TFDS text corpora (e.g. a prepared Wikipedia config) as a random-access source of `{"id", "text"}` records."""

from __future__ import annotations

from typing import Any


class TfdsTextSource:
    """`tfds.data_source(name, split, data_dir)` records mapped to `{"id", "text"}` (bytes decoded as UTF-8)."""

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None, text_key: str = "text"):
        self.args = (name, split, data_dir, text_key)
        import tensorflow_datasets as tfds
        self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        self.text_key = text_key

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        text = self._source[i][self.text_key]
        return {"id": f"{self.args[0]}/{self.args[1]}:{i}", "text": text.decode("utf-8") if isinstance(text, bytes) else str(text)}

    def __getstate__(self) -> dict:
        return {"args": self.args}

    def __setstate__(self, state: dict) -> None:
        self.__init__(*state["args"])
