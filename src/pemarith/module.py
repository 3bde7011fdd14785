"""The PEM value type: parameter-efficient modules whose algebra is Python operators.

A ``PEM`` is the normal form ``sum_i c_i * theta_i`` over named adapter files: ``.terms`` maps
each name to its coefficient and ``.adapters`` each name to its lazy ``Adapter``. Nothing is
read beyond the headers until ``save``/``iter_tensors``, which stream one layer at a time.

>>> merged = 0.5 * load("a") + 0.5 * load("b")        # doctest: +SKIP
>>> (-load("toxic")).save("detoxed")                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from .compat import check_adapters
from .dtypes import cast
from .errors import CompatibilityError, PemarithError, did_you_mean
from .expr import format_terms
from .io import Adapter, dtype_code
from .kinds import Kind
from .methods import MergeSpec, merge
from .save import SaveReport, write_adapter

AFFINE_TOL = 1e-6


class ModuleAlgebraError(PemarithError, TypeError):
    """An operation outside the linear algebra of modules (``a * b``, ``a / b``, ``a + 1``)."""


def _scalar(x: Any, op: str) -> float:
    if isinstance(x, PEM):
        raise ModuleAlgebraError(
            f"cannot {op} two modules: module arithmetic is linear (scale by numbers only)"
        )
    if not isinstance(x, numbers.Real):
        raise ModuleAlgebraError(f"cannot {op} a module by {type(x).__name__}; use a real number")
    v = float(x)
    if not math.isfinite(v):
        raise ModuleAlgebraError(f"cannot {op} a module by {v}")
    return v


class PEM:
    """An immutable linear combination of PEFT adapters (see SPEC.md for what it means).

    ``a + b``, ``a - b``, ``-a`` (the PEM negation), ``0.3 * a``, ``a * 0.3``, ``a / 2`` and
    ``sum([a, b])`` build new PEMs; the same name twice adds the coefficients (it must then
    refer to the same adapter directory).
    """

    __slots__ = ("_terms", "_adapters", "_mode", "_rank", "_method", "_base_model")
    _terms: Mapping[str, float]
    _adapters: Mapping[str, Adapter]
    _mode: str | None
    _rank: int | None
    _method: MergeSpec | None
    _base_model: str | None

    def __init__(
        self,
        terms: Mapping[str, float],
        adapters: Mapping[str, Adapter],
        mode: str | None = None,
        rank: int | None = None,
        method: MergeSpec | None = None,
        base_model: str | None = None,
    ):
        if set(terms) != set(adapters):
            raise PemarithError("PEM terms and adapters must have the same names")
        for n, c in terms.items():
            if not math.isfinite(c):
                raise ModuleAlgebraError(
                    f"the coefficient of {n[:100]!r} is {c} (an overflow); use smaller coefficients"
                )
        # 15 significant digits: 1 - 0.6 is 0.4 here, not 0.3999999999999999 (a relative change
        # below 1e-15, far under any dtype's precision)
        object.__setattr__(
            self, "_terms", MappingProxyType({n: float(f"{c:.15g}") for n, c in terms.items()})
        )
        object.__setattr__(self, "_adapters", MappingProxyType(dict(adapters)))
        object.__setattr__(self, "_mode", mode)
        object.__setattr__(self, "_rank", rank)
        object.__setattr__(self, "_method", method)
        # set: the modules' base-model names are not compared, and the result records this one
        object.__setattr__(self, "_base_model", base_model)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("PEM is immutable")

    @property
    def terms(self) -> Mapping[str, float]:
        return self._terms

    @property
    def adapters(self) -> Mapping[str, Adapter]:
        return self._adapters

    @property
    def kind(self) -> Kind:
        return next(iter(self._adapters.values())).kind

    # ---- algebra -------------------------------------------------------------------------
    def _combine(self, other: PEM, sign: float) -> PEM:
        terms, adapters = dict(self._terms), dict(self._adapters)
        for n, c in other._terms.items():
            a = other._adapters[n]
            if n in adapters and not adapters[n].same_file(a):
                raise CompatibilityError(
                    f"the name {n!r} refers to two different adapters: {adapters[n].path} and {a.path}"
                )
            adapters[n] = a
            terms[n] = terms.get(n, 0.0) + sign * c
        # save() defaults remembered from compose(): kept when the operands agree (or one has none)
        mine, theirs = (self._mode, self._rank), (other._mode, other._rank)
        mode, rank = (
            mine if theirs in ((None, None), mine) else theirs if mine == (None, None) else (None, None)
        )
        method = (
            self._method
            if other._method in (None, self._method)
            else (other._method if self._method is None else None)
        )
        base = self._base_model if other._base_model in (None, self._base_model) else other._base_model
        return PEM(terms, adapters, mode, rank, method, base)

    def _scaled(self, c: float) -> PEM:
        return PEM(
            {n: c * v for n, v in self._terms.items()},
            self._adapters,
            self._mode,
            self._rank,
            self._method,
            self._base_model,
        )

    def __add__(self, other: Any) -> PEM:
        if isinstance(other, PEM):
            return self._combine(other, 1.0)
        raise ModuleAlgebraError(f"cannot add {type(other).__name__} to a module; add modules only")

    def __radd__(self, other: Any) -> PEM:
        if isinstance(other, numbers.Number) and other == 0:  # sum([...]) starts from 0
            return self
        return self.__add__(other)

    def __sub__(self, other: Any) -> PEM:
        if isinstance(other, PEM):
            return self._combine(other, -1.0)
        raise ModuleAlgebraError(
            f"cannot subtract {type(other).__name__} from a module; subtract modules only"
        )

    def __rsub__(self, other: Any) -> PEM:
        if isinstance(other, numbers.Number) and other == 0:
            return -self
        raise ModuleAlgebraError(f"cannot subtract a module from {type(other).__name__}")

    def __neg__(self) -> PEM:
        return self._scaled(-1.0)

    def __pos__(self) -> PEM:
        return self

    def __mul__(self, other: Any) -> PEM:
        return self._scaled(_scalar(other, "multiply"))

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> PEM:
        c = _scalar(other, "divide")
        if c == 0:
            raise ModuleAlgebraError("cannot divide a module by zero")
        return self._scaled(1.0 / c)

    def __rtruediv__(self, other: Any) -> PEM:
        raise ModuleAlgebraError("cannot divide by a module: module arithmetic is linear")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PEM):
            return NotImplemented
        return dict(self._terms) == dict(other._terms) and all(
            self._adapters[n].same_file(other._adapters[n]) for n in self._terms
        )

    def __hash__(self) -> int:
        return hash(frozenset((n, c, str(self._adapters[n].path)) for n, c in self._terms.items()))

    def __str__(self) -> str:
        return format_terms(dict(self._terms))

    def __repr__(self) -> str:
        inputs = ", ".join(f"{n}={a.summary()}" for n, a in self._adapters.items())
        return f"PEM({str(self)!r}, {inputs})"

    # ---- composition ---------------------------------------------------------------------
    def _resolve(self, mode: str | None, rank: int | None) -> tuple[str, int | None]:
        if mode is None:
            return self._mode or "factorwise", self._rank if rank is None else rank
        return mode, rank

    def merge_spec(self, method: str | MergeSpec | None, **options: Any) -> MergeSpec:
        """The merge method: ``method`` (a name with ``density``/``majority_sign``/``seed``/``space``
        options, or a :class:`MergeSpec`), else the one given to ``compose``, else linear."""
        if isinstance(method, MergeSpec):
            return method
        given = {k: v for k, v in options.items() if v is not None}
        if method is None:
            spec = self._method or MergeSpec()
            return dataclasses.replace(spec, **given) if given else spec
        return MergeSpec(method, **given)

    def check(
        self,
        mode: str | None = None,
        rank: int | None = None,
        keep: str | None = None,
        method: MergeSpec | None = None,
    ) -> None:
        """Raise ``CompatibilityError`` (naming modules and the difference) unless the terms can
        be composed in ``mode``: same PEFT type, base model, target modules, layers and shapes,
        same ``modules_to_save`` (combinable only if the coefficients sum to 1, or ``keep``)."""
        mode, rank = self._resolve(mode, rank)
        self._check_inputs(mode, rank, self.merge_spec(method))
        names = list(self._terms)
        a0 = self._adapters[names[0]]
        if keep is not None and keep not in self._terms:
            raise CompatibilityError(
                f"keep={keep!r} is not a module of this composition"
                f"{did_you_mean(keep, names)}; choose one of {', '.join(names)}"
            )
        total = sum(self._terms.values())
        if a0.extra and keep is None and abs(total - 1.0) > AFFINE_TOL:
            heads = sorted({k.rsplit(".", 1)[0] for k in a0.extra})
            raise CompatibilityError(
                f"modules_to_save {', '.join(heads)} are full weights: they combine only when the "
                f"coefficients sum to 1 (here {total:g}); pass keep=<name> (--keep) to keep one module's copy"
            )

    def _check_inputs(self, mode: str, rank: int | None, method: MergeSpec | None = None) -> None:
        """Whether the adapters compose in ``mode`` (any coefficients): done once per set of
        adapters, mode, rank, method and base model (remembered in the first adapter's ``checked``)."""
        names = list(self._terms)
        ads = self._adapters
        if not names:
            raise CompatibilityError("nothing to compose: the expression has no modules")
        a0 = ads[names[0]]
        key = (tuple(names), tuple(ads[n] for n in names), mode, rank, method, self._base_model)
        if key in a0.checked:
            return
        check_adapters(names, ads, mode, rank, method, self._base_model)
        a0.checked.add(key)

    def output_config(self, mode: str | None = None, rank: int | None = None) -> dict[str, Any]:
        """The adapter_config.json of the composed adapter."""
        mode, rank = self._resolve(mode, rank)
        ads = list(self._adapters.values())
        config = self.kind.output_config(ads[0].config, ads, mode, rank)
        if self._base_model is not None:
            config["base_model_name_or_path"] = self._base_model
        return config

    def _plan(self, mode: str, rank: int | None, dtype: Any) -> list[tuple[str, str, tuple[int, ...]]]:
        ads = list(self._adapters.values())
        a0, kind = ads[0], self.kind
        forced = dtype_code(dtype) if dtype is not None else None
        specs = []
        for layer in a0.layers:
            for part, shape in kind.out_shapes(ads, layer, mode, rank).items():
                src = a0.layers[layer].get(part) or next(iter(a0.layers[layer].values()))
                specs.append((f"{layer}.{part}", forced or a0.dtypes[src], tuple(shape)))
        specs += [(k, forced or a0.dtypes[k], a0.shapes[k]) for k in a0.extra]
        specs += [(k, a0.dtypes[k], a0.shapes[k]) for k in a0.frozen]  # a copy of the base: as it is
        return specs

    def _iter_layers(
        self, mode: str, rank: int | None, keep: str | None, dtype: Any, method: MergeSpec | None = None
    ) -> Iterator[tuple[str, dict[str, np.ndarray], float | None]]:
        """Each layer's output tensors, *not yet rounded* to their output dtype (the writer's
        encoding rounds them once, as :func:`pemarith.dtypes.cast` would), and its SVD error."""
        spec = self.merge_spec(method)
        self.check(mode, rank, keep, spec)
        names = list(self._terms)
        ads = [self._adapters[n] for n in names]
        coefs = [self._terms[n] for n in names]
        kind = self.kind
        for layer in ads[0].layers:
            if (
                not spec.on_task_vectors
            ):  # combine widens what it computes with (exact mode copies factors as stored)
                out, err = kind.combine(layer_tensors(ads, layer, stored=True), coefs, ads, mode, rank)
            elif spec.space == "core":  # methods.py: the task vectors' cores, merged, back
                tensors = layer_tensors(ads, layer)
                cores, basis = kind.core_vectors(tensors, coefs, ads)
                out, err = kind.from_core(merge(cores, spec, layer), basis, tensors, rank)
            else:  # methods.py: the signed task vectors, merged, back to the kind's parts
                tensors = layer_tensors(ads, layer)
                merged = merge(kind.task_vectors(tensors, coefs, ads), spec, layer)
                out, err = kind.from_task_vector(merged, tensors, rank)
            yield layer, {f"{layer}.{p}": v for p, v in out.items()}, err
        for key in ads[0].extra:
            if keep is not None:
                w = ads[names.index(keep)].tensor(key)
            else:  # an affine combination of full weights: sum_i c_i W_i with sum_i c_i = 1
                wide = np.float64 if any(a.dtypes[key] == "F64" for a in ads) else np.float32
                w = np.asarray(sum(np.multiply(c, a.tensor(key).astype(wide)) for c, a in zip(coefs, ads)))
            yield key, {key: np.asarray(w)}, None
        for key in ads[0].frozen:
            yield key, {key: ads[0].tensor(key)}, None

    def iter_tensors(
        self,
        mode: str | None = None,
        rank: int | None = None,
        keep: str | None = None,
        dtype: Any = None,
        method: str | MergeSpec | None = None,
        **options: Any,
    ) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(key, array)`` of the composed adapter in PEFT's saved-key format (adapter
        name stripped, e.g. ``base_model.model.q_proj.lora_A.weight``), one layer at a time."""
        mode, rank = self._resolve(mode, rank)
        codes = {k: c for k, c, _ in self._plan(mode, rank, dtype)}
        for _, tensors, _ in self._iter_layers(mode, rank, keep, dtype, self.merge_spec(method, **options)):
            for key, array in tensors.items():
                yield key, cast(array, codes[key])

    def save(
        self,
        out: str | os.PathLike[str],
        mode: str | None = None,
        rank: int | None = None,
        force: bool = False,
        keep: str | None = None,
        dtype: Any = None,
        protect: tuple[str | os.PathLike[str], ...] = (),
        method: str | MergeSpec | None = None,
        density: float | None = None,
        majority_sign: str | None = None,
        seed: int | None = None,
        space: str | None = None,
    ) -> SaveReport:
        """Stream the composition to a PEFT adapter directory ``out``, atomically.

        ``mode``/``rank`` default to those given to ``compose`` (else ``"factorwise"``).
        ``keep`` names the module whose ``modules_to_save`` tensors to keep; ``dtype`` overrides
        the output dtype (default: the first input's dtype, tensor by tensor). Refuses an
        existing ``out`` unless ``force`` (which replaces only an empty directory or an earlier
        output), and never writes over an input or a path in ``protect`` (e.g. modules given but
        unused): see :mod:`pemarith.fs`. ``method`` (``"ties"``, ``"dare_linear"``, ``"dare_ties"``,
        ``"magnitude_prune"``, with ``density``, ``majority_sign``, ``seed``) merges by that method
        instead of linear arithmetic, in ``space`` (``"dense"``, the default, or ``"core"``; see
        :mod:`pemarith.methods`).
        """
        mode, rank = self._resolve(mode, rank)
        spec = self.merge_spec(method, density=density, majority_sign=majority_sign, seed=seed, space=space)
        self.check(mode, rank, keep, spec)
        return write_adapter(self, out, mode, rank, keep, dtype, spec, force, protect)


def layer_tensors(adapters: list[Adapter], layer: str, stored: bool = False) -> list[dict[str, np.ndarray]]:
    """One layer's parts (``{part: float64 array}``) of each adapter, in order; with ``stored``,
    as :data:`pemarith.dtypes.STORED` holds them (bfloat16 as its uint16 bits), not decoded."""
    if stored:
        return [{p: a.stored(key) for p, key in a.layers[layer].items()} for a in adapters]
    return [{p: a.tensor(key).astype(np.float64) for p, key in a.layers[layer].items()} for a in adapters]
