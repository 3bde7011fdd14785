"""The sha256 pemarith records for an input is the file's, whatever it read and in what order:
hashed on a background thread as tensors are read (pemarith.filehash)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
import shutil

import pytest

import pemarith
from pemarith.errors import AdapterError
from pemarith.filehash import FileHash
from pemarith.io import Adapter


def _true_sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("order", ["none", "file", "shuffled", "half", "twice"])
def test_sha256_whatever_was_read(adapters, order):
    a = Adapter(adapters["c8"])
    keys = list(a.shapes)
    if order == "shuffled":
        random.Random(0).shuffle(keys)
    elif order == "half":
        keys = keys[1::2]
    elif order == "twice":
        keys = keys + keys[::-1]
    for key in [] if order == "none" else keys:
        a.tensor(key)
    assert a.sha256() == _true_sha(a.weights_path)
    assert a.sha256() == _true_sha(a.weights_path)  # cached, and reading more changes nothing
    a.tensor(keys[0])
    assert a.sha256() == _true_sha(a.weights_path)


def test_overlapping_and_out_of_order_ranges(tmp_path):
    data = bytes(range(256)) * 4000
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    h = FileHash(path)
    for start, end in [(10, 500), (400, 900), (5000, 7000), (100, 200), (6500, 9000), (0, 5)]:
        h.feed(start, data[start:end])
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_file_that_shrank_while_hashing_is_an_error(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    h = FileHash(path)
    h.feed(800, b"x" * 200)  # the gap 0..800 is hashed from the file, on the worker
    path.write_bytes(b"x" * 10)
    with pytest.raises(AdapterError, match="truncated while hashing"):
        h.hexdigest()


def _child_sha(conn, adapter) -> None:
    conn.send(adapter.sha256())


def test_a_forked_child_gets_the_right_sha256(adapters):
    # a sweep's or search's workers may fork after the parent read (and queued hashes of) tensors
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    a = Adapter(adapters["b"])
    for key in a.shapes:
        a.tensor(key)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child_sha, args=(child, a))
    p.start()
    assert parent.poll(60), "the child hung"
    assert parent.recv() == _true_sha(a.weights_path)
    p.join(10)


def test_the_output_records_the_inputs_sha256(adapters, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(adapters["a"], src)
    report = (0.5 * pemarith.load(src, "a")).save(tmp_path / "out", mode="exact")
    prov = json.loads((report.path / "pemarith.json").read_text())
    assert prov["inputs"][0]["sha256"] == _true_sha(src / "adapter_model.safetensors")
