"""Building PEMs: :func:`load` one adapter directory, :func:`compose` an expression over several."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import CompatibilityError
from .expr import Expression
from .io import Adapter
from .methods import MergeSpec
from .module import PEM


def load(path: str | os.PathLike[str], name: str | None = None) -> PEM:
    """A lazy PEM of one adapter directory (reads only its config and safetensors header).

    ``name`` defaults to the directory's basename.
    """
    adapter = Adapter(path)
    name = name or adapter.path.name
    return PEM({name: 1.0}, {name: adapter})


def compose(
    expr: str | Expression,
    modules: Mapping[str, str | os.PathLike[str] | PEM],
    mode: str = "factorwise",
    rank: int | None = None,
    variables: Mapping[str, float] | None = None,
    method: str | MergeSpec = "linear",
    density: float | None = None,
    majority_sign: str = "total",
    seed: int = 0,
    base_model: str | None = None,
    space: str = "dense",
    **vars: float,
) -> PEM:
    """The PEM of ``expr`` (e.g. ``"l*a + (1-l)*b"``, ``l=0.3``; text, or an
    :class:`~pemarith.expr.Expression` parsed once for many values) over ``modules``.

    ``modules`` maps the expression's names to adapter paths or PEMs (a PEM is used with its
    own term names). ``mode``/``rank`` become the defaults of ``.save()``; compatibility is
    checked now (except ``modules_to_save``, which depends on ``keep``). Variables are given as
    keywords or, whatever their names (``mode``, ``rank``, ``expr``), in ``variables``.
    ``method``/``density``/``majority_sign``/``seed`` choose a merge method and ``space`` where it
    runs (``dense`` or ``core``; see :mod:`pemarith.methods`; default ``linear``), remembered for
    ``.save()``. The modules must
    name the same base model (``pemarith.base_names``: a packaged short name and its hub id are
    one); ``base_model`` says they are the same weights whatever they name, and is recorded.
    """
    spec = method if isinstance(method, MergeSpec) else MergeSpec(method, density, majority_sign, seed, space)
    expression = expr if isinstance(expr, Expression) else Expression(expr)
    terms = expression.normal_form(list(modules), variables, **vars)
    acc: PEM | None = None
    for name, c in terms.items():
        value = modules[name]
        p = value if isinstance(value, PEM) else load(value, name=name)
        acc = c * p if acc is None else acc + c * p
    if acc is None:
        raise CompatibilityError(f"nothing to compose: {expression.text!r} has no modules")
    result = PEM(
        acc.terms,
        acc.adapters,
        mode,
        rank,
        spec if spec.on_task_vectors else None,
        base_model or acc._base_model,
    )
    result._check_inputs(mode, rank, spec)  # the modules_to_save rule waits for save(keep=...)
    return result
