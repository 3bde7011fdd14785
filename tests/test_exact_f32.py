"""The float32 fast path of exact compose (pemarith.dtypes.scale_f32/stack_scaled) gives the
float64 products' values or declines, never a different value; tensors read by pread on one
descriptor per file (pemarith.tensorfile.TensorReader) equal the bytes on disk, and so does a
tensor copied in chunks by the writer (SafetensorsWriter.copy_tensor, bake's unchanged tensors)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from pemarith.dtypes import (
    exact_in_f32,
    f32_to_bf16_bits,
    scale_f32,
    significand_bits,
    stack_scaled,
    values,
)
from pemarith.errors import AdapterError
from pemarith.tensorfile import SafetensorsWriter, TensorReader, read_bytes, read_safetensors_header


def test_significand_bits():
    assert significand_bits(0.0) == 0
    assert significand_bits(1.0) == significand_bits(2.0**-100) == significand_bits(-8.0) == 1
    assert significand_bits(0.75) == significand_bits(-3.0) == 2
    assert significand_bits(0.1) == 52  # 0x1.999999999999ap-4: 53 bits less one trailing zero
    assert significand_bits(float("inf")) > 53 and significand_bits(float("nan")) > 53


def test_exact_in_f32_table():
    bf16, f16, f32, f64 = (np.dtype(c) for c in ("<u2", "<f2", "<f4", "<f8"))
    assert exact_in_f32(bf16, 0.3) is False  # 8 + 52 bits
    assert exact_in_f32(bf16, 0.75) and exact_in_f32(bf16, 0.625)  # 8 + 2, 8 + 3 bits
    assert exact_in_f32(bf16, float(np.float32(0.1))) is False  # 8 + 24 > 24
    assert exact_in_f32(f16, 0.375) and not exact_in_f32(f16, 1 + 2**-14)  # 11 + 15 > 24
    assert exact_in_f32(f32, 0.125) and exact_in_f32(f32, -4.0)  # powers of two
    assert not exact_in_f32(f32, 0.75) and not exact_in_f32(f64, 0.5)


def _as_stored(x: np.ndarray, code: str) -> np.ndarray:
    return f32_to_bf16_bits(x.astype(np.float32)) if code == "bf16" else x.astype(code)


magnitudes = st.sampled_from([1.0, 1e-3, 1e3, 1e-36, 1e36, 1e-40, 3e38])
weights = st.sampled_from(
    [1.0, -1.0, 0.5, 0.25, 0.75, -1.5, 3.0, 2.0**-100, 2.0**100, 2.0**-20, 0.3, 1e30, 0.0, 0.0625]
)


@settings(max_examples=300, deadline=None)
@given(
    code=st.sampled_from(["bf16", "float16", "float32", "float64"]),
    scale=magnitudes,
    w=weights,
    n=st.integers(1, 200),
    seed=st.integers(0, 2**31),
    zeros=st.booleans(),
)
def test_scale_f32_is_exact_or_declines(code, scale, w, n, seed, zeros):
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):
        x = _as_stored(rng.standard_normal((n, 3)) * scale, code)
    if zeros:
        x.reshape(-1)[::3] = 0
    v = values(x).astype(np.float64)
    if not np.isfinite(v).all():
        return  # pemarith refuses non-finite inputs before composing
    out = np.empty(x.shape, np.float32)
    ok = scale_f32(x, w, out)
    if ok:
        assert np.array_equal(out.astype(np.float64), v * w)
        assert np.array_equal(np.signbit(out), np.signbit(v * w))
    stacked = stack_scaled([x, x[: max(1, n // 2)]], [w, 0.5], "test")
    ref = np.concatenate([v * w, v[: max(1, n // 2)] * 0.5])
    assert np.array_equal(stacked.astype(np.float64), ref)


def test_scale_f32_fast_path_is_taken_and_declines_where_it_must():
    x = f32_to_bf16_bits(np.array([1.5, -0.25, 3.0, 0.0], np.float32))
    out = np.empty(4, np.float32)
    assert scale_f32(x, 0.75, out) and out.tolist() == [1.125, -0.1875, 2.25, 0.0]
    assert stack_scaled([x, x], [0.5, -0.25], "t1").dtype == np.float32
    assert stack_scaled([x, x], [0.5, 0.3], "t2").dtype == np.float64  # 0.3 has 52 bits
    tiny = np.array([2.0**-126, 1.0], np.float32)
    assert not scale_f32(tiny, 0.5, np.empty(2, np.float32))  # a subnormal product
    assert not scale_f32(tiny, 2.0**-40, np.empty(2, np.float32))  # a product that is zero in float32
    assert stack_scaled([tiny], [2.0**-40], "t3")[0] == 2.0**-166  # kept by float64
    assert not scale_f32(np.array([3e38], np.float32), 2.0, np.empty(1, np.float32))  # overflow
    sub = np.array([2.0**-149 * 3], np.float32)  # subnormal input times 1.5: not on the grid
    assert not scale_f32(sub, 1.5, np.empty(1, np.float32))
    assert scale_f32(np.zeros(5, np.float32), 2.0**-140, np.empty(5, np.float32))  # zeros are exact


def test_scale_f32_checks_every_chunk():
    x = np.ones(200_000, np.float32)
    x[-1] = 2.0**-120  # in the last chunk: times 2**-10 underflows
    assert scale_f32(x[:-1], 2.0**-10, np.empty(x.size - 1, np.float32))
    assert not scale_f32(x, 2.0**-10, np.empty(x.size, np.float32))


@pytest.fixture
def stfile(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)}, str(path))
    infos, _ = read_safetensors_header(path)
    return path, infos


def test_tensor_reader_reads_the_bytes_on_one_descriptor(stfile):
    path, infos = stfile
    reader = TensorReader(path)
    raws = {k: reader.read(info, k) for k, info in infos.items()}
    fd = reader._fd
    assert fd is not None
    assert {k: reader.read(info, k) for k, info in infos.items()} == raws and reader._fd == fd
    assert raws == {k: read_bytes(path, info, k) for k, info in infos.items()}
    assert np.frombuffer(raws["a"], np.float32).tolist() == [0, 1, 2, 3, 4, 5]
    del reader
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with the reader


def test_tensor_reader_falls_back_when_out_of_descriptors(stfile, monkeypatch):
    path, infos = stfile
    real_open = os.open

    def no_fds(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "open", no_fds)
    reader = TensorReader(path)
    assert reader.read(infos["a"], "a") == read_bytes(path, infos["a"], "a")
    monkeypatch.setattr(os, "open", real_open)


def test_tensor_reader_names_a_truncated_file(stfile):
    path, infos = stfile
    reader = TensorReader(path)
    reader.read(infos["a"], "a")
    os.truncate(path, infos["b"].start + 2)
    with pytest.raises(AdapterError, match="truncated"):
        reader.read(infos["b"], "b")


def test_tensor_reader_is_shared_by_a_forked_child(stfile):
    path, infos = stfile
    reader = TensorReader(path)
    want = reader.read(infos["a"], "a")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: pread does not move the shared offset
        try:
            os.write(
                w, b"1" if reader.read(infos["a"], "a") == want and reader.read(infos["b"], "b") else b"0"
            )
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"1" and reader.read(infos["b"], "b") == read_bytes(path, infos["b"], "b")


@pytest.mark.parametrize("chunk, buffer", [(1, 0), (7, 0), (1 << 24, 0), (1 << 24, 3), (2, 5)])
def test_copy_tensor_writes_the_bytes_in_chunks(stfile, tmp_path, chunk, buffer):
    """Through a new buffer, or one the caller reuses for every tensor (``buffer`` bytes; the
    smaller of it and ``chunk`` at a time)."""
    path, infos = stfile
    shared = bytearray(b"x" * buffer) if buffer else None
    out = tmp_path / "out.safetensors"
    specs = [(k, i.dtype, i.shape) for k, i in infos.items()]
    writer = SafetensorsWriter(out, specs, {"format": "pt"})
    for k, info in infos.items():
        writer.copy_tensor(k, path, info, chunk=chunk, buffer=shared)
    writer.close()
    got, _ = read_safetensors_header(out)
    assert {k: read_bytes(out, got[k], k) for k in got} == {
        k: read_bytes(path, i, k) for k, i in infos.items()
    }


def test_copy_tensor_names_a_truncated_source(stfile, tmp_path):
    path, infos = stfile
    writer = SafetensorsWriter(
        tmp_path / "out.safetensors", [(k, i.dtype, i.shape) for k, i in infos.items()], {}
    )
    os.truncate(path, infos["b"].start + 2)
    writer.copy_tensor("a", path, infos["a"])
    with pytest.raises(AdapterError, match="truncated while reading tensor 'b'"):
        writer.copy_tensor("b", path, infos["b"], chunk=1)
    writer.abort()
