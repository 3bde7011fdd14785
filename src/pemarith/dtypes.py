"""The float dtypes of safetensors in plain numpy, bfloat16 included, at memory speed.

numpy has no bfloat16; ``ml_dtypes`` adds one, but importing it costs more than a whole
composition and its casts are slow. bfloat16 is the top half of a float32, so pemarith holds a
bfloat16 tensor as the float32 of the same value (exact) and converts on the bits:

- bfloat16 -> float32: ``f32_bits = u16 << 16`` (exact; NaN stays NaN).
- float32 -> bfloat16: round to nearest, ties to even, on the bits:
  ``u16 = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16``; NaN becomes the quiet NaN of the same
  sign, payload dropped (``(bits >> 16) & 0x8000 | 0x7FC0``, as ml_dtypes/Eigen), and a finite
  value past the largest bfloat16 rounds to infinity.
- float64 -> bfloat16: one rounding, not two: the float64 is first rounded to float32 *to odd*
  (truncate toward zero, set the last bit if anything was cut), which keeps enough bits for the
  second rounding to be exact.

These equal ml_dtypes' conversions bit for bit (tests/test_dtypes.py checks all 65,536
bfloat16 patterns and the float32 edge cases).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

# safetensors code -> the numpy dtype pemarith holds such a tensor in (bfloat16: float32)
HELD: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<f4"),
}
# ... and the numpy dtype of its bytes in the file
STORED: dict[str, np.dtype] = {**HELD, "BF16": np.dtype("<u2")}


_CHUNK = 1 << 16  # elements per step of the chunked conversions: their temporaries stay in cache
_SCRATCH = threading.local()


def scratch(slot: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """A C-contiguous array of ``shape`` and ``dtype`` for this thread to convert into, reused
    per ``slot`` (grown when too small): large conversions repeated tensor after tensor then
    cost no fresh allocation, so no page faults. Valid until this thread's next call with the
    same ``slot``; its values are undefined until written."""
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    buffers = _SCRATCH.__dict__
    buf = buffers.get(slot)
    if buf is None or buf.dtype != dtype or buf.size < n:
        buf = buffers[slot] = np.empty(max(n, 1 << 16), dtype)
    return buf[:n].reshape(shape)


def bf16_bits_to_f32(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (uint16): a 16-bit shift, in one pass. ``out``, a
    C-contiguous float32 array of the same shape, receives them if given (no allocation)."""
    bits = np.asarray(bits)
    if out is None:
        out = np.empty(bits.shape, np.float32)
    np.left_shift(bits, 16, out=out.view(np.uint32), dtype=np.uint32)
    return out


def f32_to_bf16_bits(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even, a chunk of
    :data:`_CHUNK` elements at a time (no full-size temporaries). ``out``, a C-contiguous uint16
    array of the same shape (e.g. the tensor's own bytes), receives them if given."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if out is None:
        out = np.empty(values.shape, np.uint16)
    if not out.flags.c_contiguous or out.shape != values.shape or out.dtype != np.uint16:
        raise ValueError(f"out must be a C-contiguous uint16 array of shape {values.shape}")
    bits, flat, fvals = values.reshape(-1).view(np.uint32), out.reshape(-1), values.reshape(-1)
    step = np.empty(min(_CHUNK, bits.size), np.uint32)
    for i in range(0, bits.size, _CHUNK):
        c = bits[i : i + _CHUNK]
        w = step[: c.size]
        np.right_shift(c, 16, out=w)
        np.bitwise_and(w, 1, out=w)
        np.add(w, 0x7FFF, out=w)
        np.add(w, c, out=w)  # (bits + 0x7FFF + lsb) >> 16; NaNs (which may wrap) are fixed below
        np.right_shift(w, 16, out=w)
        flat[i : i + c.size] = w
        nan = np.isnan(fvals[i : i + _CHUNK])
        if nan.any():
            flat[i : i + c.size][nan] = (((c[nan] >> 16) & np.uint32(0x8000)) | np.uint32(0x7FC0)).astype(
                np.uint16
            )
    return out


def f64_to_f32_odd(values: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounded to odd: the float32 next to ``values`` toward zero, with its
    last mantissa bit set when the conversion was inexact (NaN and infinities kept).

    From the nearest-even float32 ``f`` of ``x``: if ``f == x`` or ``f`` is odd, ``f`` is the
    answer (an inexact odd ``f`` is the odd one of the two neighbours of ``x``); else the answer
    is the other neighbour, one unit further out when ``|x| > |f|`` and one in when
    ``|x| < |f|`` (an overflow to infinity comes back to the largest float32, which is odd). On
    the bits ``|f|`` moves by +-1 whatever the sign; NaN compares false and stays. A chunk of
    :data:`_CHUNK` at a time, with no full-size temporaries."""
    x = np.asarray(values, dtype=np.float64, order="C")
    out = np.empty(x.shape, np.float32)
    flat, res, bits = x.reshape(-1), out.reshape(-1), out.reshape(-1).view(np.uint32)
    n = min(_CHUNK, flat.size)
    ax, af, even, up, down = np.empty(n), np.empty(n), np.empty(n, bool), np.empty(n, bool), np.empty(n, bool)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, flat.size, _CHUNK):
            c = flat[i : i + _CHUNK]
            m = c.size
            np.copyto(res[i : i + m], c, casting="unsafe")  # nearest even
            np.abs(c, out=ax[:m])
            np.abs(res[i : i + m], out=af[:m])
            b = bits[i : i + m]
            np.equal(np.bitwise_and(b, 1), 0, out=even[:m])
            np.logical_and(np.greater(ax[:m], af[:m], out=up[:m]), even[:m], out=up[:m])
            np.logical_and(np.less(ax[:m], af[:m], out=down[:m]), even[:m], out=down[:m])
            np.add(b, up[:m], out=b, casting="unsafe")
            np.subtract(b, down[:m], out=b, casting="unsafe")
    return out


def values(array: np.ndarray) -> np.ndarray:
    """The values of a tensor as stored (:data:`STORED`: bfloat16 as its ``uint16`` bits), held
    as :data:`HELD` says: bfloat16 bits decoded to float32 (exact), any other array as it is."""
    return bf16_bits_to_f32(array) if array.dtype == np.uint16 else array


# significand bits (the implicit one included) of the values an array of each stored dtype holds
SIGNIFICAND = {np.dtype("<u2"): 8, np.dtype("<f2"): 11, np.dtype("<f4"): 24, np.dtype("<f8"): 53}


def significand_bits(w: float) -> int:
    """Bits of the significand of ``w`` from its leading to its last set bit (0 for zero):
    1 for a power of two, 2 for 0.75, 52 for 0.1; more than any float for infinity or NaN."""
    if not math.isfinite(w):
        return 99
    n = abs(float(w)).as_integer_ratio()[0]
    return (n >> ((n & -n).bit_length() - 1)).bit_length() if n else 0


def exact_in_f32(dtype: np.dtype, w: float) -> bool:
    """Whether ``a * w`` is exact in float32 for every ``a`` of the stored ``dtype`` whose product
    stays in float32's normal range: a ``p``-bit times a ``q``-bit significand has at most
    ``p + q`` bits (``p`` when ``w`` is a power of two), and float32 holds 24."""
    p, q = SIGNIFICAND.get(np.dtype(dtype), 99), significand_bits(w)
    return p + q <= 24 or (q <= 1 and p <= 24)


def scale_f32(stored: np.ndarray, w: float, out: np.ndarray) -> bool:
    """``out = values(stored) * w`` in float32, and whether every product is exact there.

    For ``stored`` and ``w`` that :func:`exact_in_f32` accepts, a product is exact unless it
    leaves float32's normal range. For ``|w| <= 1`` that is underflow, to a subnormal or to zero,
    ruled out on the inputs before multiplying: ``min |a| * |w| >= 2**-126`` over the nonzero
    ``a`` (the smallest nonzero magnitude is ``min(u - 1) + 1`` on the bits ``u = |bits|``, the
    subtraction wrapping so that zeros go to the top). For ``|w| > 1`` it is overflow to infinity
    (``u >= 0x7F800000``) or a subnormal result (``u - 1 < 0x7FFFFF``; from subnormal inputs
    only), caught on the bits of the result. Returns False at once when ``exact_in_f32`` does not
    hold, or after the first inexact chunk (``out`` is then partly written). A chunk of
    :data:`_CHUNK` at a time: the checks stay in cache."""
    if not exact_in_f32(stored.dtype, w) or out.dtype != np.float32 or out.shape != stored.shape:
        return False
    src, res = stored.reshape(-1), out.reshape(-1)
    bits = res.view(np.uint32)
    u = np.empty(min(_CHUNK, src.size), np.uint32)
    w32, small = np.float32(w), abs(w) <= 1
    with np.errstate(over="ignore", under="ignore"):
        for i in range(0, src.size, _CHUNK):
            c = src[i : i + _CHUNK]
            m = c.size
            r, rb, t = res[i : i + m], bits[i : i + m], u[:m]
            if c.dtype == np.uint16:
                bf16_bits_to_f32(c, out=r)
            else:
                r[...] = c
            if small:
                np.bitwise_and(rb, np.uint32(0x7FFFFFFF), out=t)
                lowest = int(np.subtract(t, np.uint32(1), out=t).min()) + 1  # 2**32 when all zero
                if lowest < 0x7F800000 and float(np.uint32(lowest).view(np.float32)) * abs(w) < 2.0**-126:
                    return False
                np.multiply(r, w32, out=r)
            else:
                np.multiply(r, w32, out=r)
                np.bitwise_and(rb, np.uint32(0x7FFFFFFF), out=t)
                if t.max() >= 0x7F800000:
                    return False
                if np.subtract(t, np.uint32(1), out=t).min() < 0x7FFFFF:
                    return False
    return True


def stack_scaled(blocks: Sequence[np.ndarray], weights: Sequence[float], slot: str) -> np.ndarray:
    """``[w_1 a_1; ...; w_n a_n]``, the ``a_i`` as stored (stacked on axis 0).

    In float32 when every product is exact there (:func:`scale_f32`; the values then are those
    of the float64 result, so rounding either once to any output dtype gives the same bits),
    else in float64 (one rounding per product). Into :func:`scratch` buffers of ``slot``: valid
    until the next call with that slot."""
    rows = sum(b.shape[0] for b in blocks)
    shape = (rows, *blocks[0].shape[1:])
    if all(exact_in_f32(b.dtype, w) for b, w in zip(blocks, weights)):
        out, row = scratch(slot + ".f32", shape, np.float32), 0
        for b, w in zip(blocks, weights):
            if not scale_f32(b, w, out[row : row + b.shape[0]]):
                break
            row += b.shape[0]
        else:
            return out
    out, row = scratch(slot + ".f64", shape, np.float64), 0
    for b, w in zip(blocks, weights):  # numpy float64 weights: a Python float would be demoted to float32
        np.multiply(values(b), np.float64(w), out=out[row : row + b.shape[0]])
        row += b.shape[0]
    return out


def encode(array: np.ndarray, code: str) -> memoryview:
    """The little-endian bytes of ``array`` as a tensor of safetensors dtype ``code``: a
    read-only byte view of a contiguous array (no ``tobytes`` copy; ``array`` itself when it
    already is one). A ``uint16`` array is bfloat16 bits (as :data:`STORED` holds them): as
    they are for ``BF16``, decoded for any other ``code``."""
    if array.dtype == np.uint16:  # bfloat16 bits (as STORED holds them)
        if code != "BF16":
            return encode(bf16_bits_to_f32(array), code)
        out = np.ascontiguousarray(array, dtype="<u2")
    elif code == "BF16":
        if array.dtype.name == "bfloat16":  # an ml_dtypes array: its bits are already right
            out = np.ascontiguousarray(array).view(np.uint16).astype("<u2")
        else:
            f32 = f64_to_f32_odd(array) if array.dtype == np.float64 else np.asarray(array, dtype=np.float32)
            out = f32_to_bf16_bits(f32).astype("<u2", copy=False)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.ascontiguousarray(array, dtype=STORED[code])
    return out.reshape(-1).view(np.uint8).data.toreadonly()


def decode(raw: bytes, code: str, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor of ``raw`` bytes, held as :data:`HELD` says (read-only for native dtypes)."""
    stored = np.frombuffer(raw, dtype=STORED[code]).reshape(shape)
    return bf16_bits_to_f32(stored) if code == "BF16" else stored


def cast(array: np.ndarray, code: str) -> np.ndarray:
    """``array`` rounded to dtype ``code`` and held as :data:`HELD` says: exactly the values
    that writing it as ``code`` stores (an overflow becomes inf, without a numpy warning)."""
    array = values(np.asarray(array))
    if code == "BF16":
        return bf16_bits_to_f32(np.frombuffer(encode(array, code), dtype="<u2").reshape(array.shape))
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(array).astype(HELD[code])


def finite_bytes(raw: bytes | bytearray | memoryview, code: str) -> bool:
    """Whether every value stored in ``raw`` is finite (no NaN, no infinity)."""
    stored = np.frombuffer(raw, dtype=STORED[code])
    if code == "BF16":  # exponent all ones: inf or NaN; a chunk at a time (no full-size temporaries)
        step = np.empty(min(_CHUNK, stored.size), np.uint16)
        for i in range(0, stored.size, _CHUNK):
            c = stored[i : i + _CHUNK]
            w = np.bitwise_and(c, np.uint16(0x7F80), out=step[: c.size])
            if (w == np.uint16(0x7F80)).any():
                return False
        return True
    return bool(np.isfinite(stored).all())
