"""bfloat16 and float16 conversions in plain numpy equal ml_dtypes' bit for bit (pemarith.dtypes),
and the core never imports ml_dtypes."""

from __future__ import annotations

import math
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from pemarith.dtypes import (
    bf16_bits_to_f32,
    cast,
    decode,
    encode,
    f32_to_bf16_bits,
    f64_to_f32_odd,
    finite_bytes,
)


def test_bf16_to_f32_on_all_65536_patterns():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ours = bf16_bits_to_f32(bits)
    theirs = bits.view(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def _f32_edge_patterns() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = [
        0,
        0x80000000,
        0x7F800000,
        0xFF800000,
        0x7FC00000,
        0xFFC00001,
        0x7F800001,
        0x00000001,
        0x007FFFFF,
        0x00800000,
        0x7F7FFFFF,
        0xFF7FFFFF,
        0x7F7F8000,
        0x7F7F7FFF,
        0x3F808000,
        0x3F818000,
        0x3F80FFFF,
        0x3F807FFF,
        0x00008000,
        0x00018000,
    ]
    ties = (np.arange(1 << 16, dtype=np.uint32) << 16) | np.uint32(0x8000)  # every exact tie
    near = ties + rng.integers(-2, 3, ties.size).astype(np.uint32)
    random = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([np.array(special, dtype=np.uint32), ties, near, random])


def test_f32_to_bf16_rounds_like_ml_dtypes():
    values = _f32_edge_patterns().view(np.float32)
    ours = f32_to_bf16_bits(values)
    with np.errstate(over="ignore", invalid="ignore"):
        theirs = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)  # bit for bit, NaNs included
    nan = np.isnan(values)
    assert nan.sum() > 1000 and np.isnan(bf16_bits_to_f32(ours[nan])).all()  # NaN stays a (quiet) NaN
    assert ((ours[nan] & 0x7FFF) == 0x7FC0).all()


def test_conversions_into_given_buffers():
    # bake converts into buffers it reuses: the tensor's own bytes and a float32 scratch
    values = _f32_edge_patterns()[: 3 * 65536 + 4].view(np.float32).reshape(-1, 4)
    raw = bytearray(values.size * 2)
    out = np.frombuffer(raw, dtype=np.uint16).reshape(values.shape)
    assert f32_to_bf16_bits(values, out=out) is out
    np.testing.assert_array_equal(out, f32_to_bf16_bits(values))
    f32 = np.empty(values.shape, np.float32)
    assert bf16_bits_to_f32(out, out=f32) is f32
    np.testing.assert_array_equal(f32.view(np.uint32), bf16_bits_to_f32(out).view(np.uint32))
    with pytest.raises(ValueError, match="C-contiguous uint16"):
        f32_to_bf16_bits(values, out=np.empty((values.shape[1], values.shape[0]), np.uint16).T)


@pytest.mark.parametrize("bad", [0x7F80, 0xFF80, 0x7FC1])
def test_finite_bytes_finds_a_late_non_finite_bfloat16(bad):
    bits = np.full(3 * 65536 + 7, 0x3F80, np.uint16)  # 1.0, over several chunks
    assert finite_bytes(bits.tobytes(), "BF16")
    bits[-1] = bad
    assert not finite_bytes(bits.tobytes(), "BF16")


def test_f64_to_bf16_rounds_once_like_ml_dtypes():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.standard_normal(200_000) * 10.0 ** rng.integers(-45, 39, 200_000),
            # halfway between two bfloat16 values, plus or minus a float64 ulp: where
            # rounding to float32 first would round twice
            (np.arange(1, 5000) * 2.0**-8 + 2.0**-9) * (1 + 2.0**-40),
            (np.arange(1, 5000) * 2.0**-8 + 2.0**-9) * (1 - 2.0**-40),
            [1e39, -1e39, 3.4e38, 1e-46, -1e-50, 0.0, -0.0],
        ]
    )
    ours = np.frombuffer(encode(x, "BF16"), dtype="<u2")
    with np.errstate(over="ignore"):
        theirs = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)


def _round_to_odd_reference(x: np.ndarray) -> np.ndarray:
    """The definition, one value at a time: the float32 toward zero, last bit set if inexact."""
    out = []
    for v in x.ravel().tolist():
        if not math.isfinite(v):
            out.append(np.float32(v))
            continue
        with np.errstate(over="ignore"):
            f = np.float32(v)
        if abs(float(f)) > abs(v):  # rounded away from zero (or overflowed): one step back
            f = np.nextafter(f, np.float32(0))
        if float(f) != v:
            f = np.array(f).view(np.uint32) | np.uint32(1)
            f = np.array(f, np.uint32).view(np.float32)[()]
        out.append(np.float32(f))
    return np.array(out, np.float32).reshape(x.shape)


def test_f64_to_f32_rounds_to_odd_by_its_definition():
    rng = np.random.default_rng(2)
    x = np.concatenate(
        [
            rng.standard_normal(20_000) * 10.0 ** rng.integers(-48, 40, 20_000),
            rng.standard_normal(2000).astype(np.float32).astype(np.float64),  # exact
            [
                0.0,
                -0.0,
                np.inf,
                -np.inf,
                np.nan,
                1e39,
                -1e39,
                3.4028235e38,
                3.4028236e38,
                1e-46,
                -1e-46,
                1e-50,
                -1e-50,
                1.4e-45,
                2.0**-149 * 1.5,
                1e300,
                -1e300,
                1 + 2.0**-30,
                -(1 + 2.0**-30),
                2.0**-126 * (1 - 2.0**-30),
            ],
        ]
    )
    ours = f64_to_f32_odd(x)
    ref = _round_to_odd_reference(x)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    # any shape and layout; a scalar stays 0-d
    grid = x[: 3 * 4000].reshape(3, 4000)[:, ::2]
    np.testing.assert_array_equal(
        f64_to_f32_odd(grid).view(np.uint32), ref[:12000].reshape(3, 4000)[:, ::2].view(np.uint32)
    )
    assert f64_to_f32_odd(np.float64(1.5)).shape == () and f64_to_f32_odd(np.empty((0, 3))).shape == (0, 3)


def test_float16_and_round_trips():
    x = np.random.default_rng(2).standard_normal(1000) * 100
    np.testing.assert_array_equal(decode(encode(x, "F16"), "F16", (1000,)), x.astype(np.float16))
    held = cast(x, "BF16")
    assert held.dtype == np.float32
    np.testing.assert_array_equal(held, x.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(decode(encode(held, "BF16"), "BF16", (1000,)), held)


def test_the_core_never_imports_ml_dtypes(adapters, tmp_path):
    code = (
        f"import sys, pemarith; p = pemarith.load({str(adapters['bf_a'])!r}, 'a') + "
        f"pemarith.load({str(adapters['bf_b'])!r}, 'b'); p.save({str(tmp_path / 'out')!r}); "
        f"(0.5 * pemarith.load({str(adapters['a'])!r})).save({str(tmp_path / 'o2')!r}); "
        "print('ml_dtypes' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
