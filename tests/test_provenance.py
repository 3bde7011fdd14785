"""The provenance's sha256 of every input is exact, and computed from the bytes read for the
composition (one pass over each input, not two)."""

from __future__ import annotations

import hashlib
import json

import pytest

import pemarith
from pemarith.filehash import FileHash


def file_sha(path) -> str:
    return hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "expr, names, kwargs",
    [
        ("0.5*a + 0.5*b", ("a", "b"), {}),
        ("a - b", ("a", "b"), {"mode": "exact", "rank": 3}),
        ("ha - hb", ("ha", "hb"), {"keep": "ha"}),  # hb's head is never read
        ("0.5*bf_a + 0.5*bf_b", ("bf_a", "bf_b"), {}),
        ("ia - ib", ("ia", "ib"), {}),
    ],
)
def test_recorded_sha256_is_that_of_the_file(adapters, tmp_path, expr, names, kwargs):
    pem = pemarith.compose(expr, {n: adapters[n] for n in names})
    pem.save(tmp_path / "out", **kwargs)
    record = json.loads((tmp_path / "out" / "pemarith.json").read_text())
    assert {i["name"]: i["sha256"] for i in record["inputs"]} == {n: file_sha(adapters[n]) for n in names}


def test_each_input_is_read_once(adapters, tmp_path, monkeypatch):
    reread: dict[str, int] = {}
    real = FileHash._hash_range  # what is hashed from the file itself, not from the tensors' reads

    def counting(self, start, end):
        reread[self.path.parent.name] = reread.get(self.path.parent.name, 0) + end - start
        return real(self, start, end)

    monkeypatch.setattr(FileHash, "_hash_range", counting)
    pem = pemarith.compose("0.5*a + 0.5*b", {"a": adapters["a"], "b": adapters["b"]})
    pem.save(tmp_path / "out")
    for n in ("a", "b"):
        size = (adapters[n] / "adapter_model.safetensors").stat().st_size
        header = 8 + int.from_bytes((adapters[n] / "adapter_model.safetensors").read_bytes()[:8], "little")
        assert reread[n] <= header < size / 2  # only the header was read for the hash alone
