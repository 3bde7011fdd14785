"""Choosing a value of a sweep: selection rules over validation scores, and the search.

A rule is a tiny language, parsed without ``eval``::

    rule   := ("max" | "min") [NAME] ["where" cond ("and" cond)*]
    cond   := sum ("<=" | "<" | ">=" | ">") sum
    sum    := prod (("+" | "-") prod)*
    prod   := unary (("*" | "/") unary)*
    unary  := "-" unary | NUMBER | NAME | "base" | "base." NAME | "(" sum ")"

- ``max`` / ``min`` alone optimise the primary metric (the first tracked one).
- ``max accuracy``, ``min toxicity``: optimise that metric. ``max l`` (the sweep variable):
  the largest value of ``l`` that satisfies the conditions; the paper's unlearning rule
  (Appendix C) is ``max l where ppl <= base + 0.5``.
- In a condition, a NAME is a metric of the composed model at that value; ``base`` is the base
  model's (no adapter) score of the one metric named in the same condition, ``base.NAME`` names it.
- Metric names are resolved against the tracked columns: exact, else the unique column whose last
  dotted part matches (``accuracy`` for ``rte.accuracy``), with the aliases ``ppl``, ``acc``,
  ``tox``.
- Ties go to the smallest value of the variable; NaN scores never win and fail every condition.

:func:`search` decides which values to evaluate: all of a grid, or coarse then fine (``refine``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import PemarithError, did_you_mean

Scores = dict[str, float]
Objective = Callable[[float], Scores]
SEARCHES = ("grid", "refine")
ALIASES = {"ppl": "perplexity", "acc": "accuracy", "tox": "toxicity"}

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][\w.]*)"
    r"|(?P<op><=|>=|[<>+\-*/()]))"
)
_CMP: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}


class RuleError(PemarithError):
    """A malformed selection rule, a name it cannot resolve, or a rule no value satisfies."""


# Arithmetic AST: ("num", x) | ("metric", name) | ("base", name or None) | (op, left, right)
Node = tuple


def resolve_metric(name: str, columns: Sequence[str]) -> str:
    """The column ``name`` refers to (exact, alias, or unique last dotted part)."""
    if name in columns:
        return name
    wanted = {name, ALIASES.get(name, name)}
    hits = [c for c in columns if c in wanted or c.rsplit(".", 1)[-1] in wanted]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise RuleError(f"metric {name!r} is ambiguous: {', '.join(hits)}; name one in full")
    known = ", ".join(columns) or "none"
    raise RuleError(f"unknown metric {name!r}{did_you_mean(name, columns)}; tracked: {known}")


@dataclass(frozen=True)
class Condition:
    left: Node
    op: str
    right: Node
    text: str

    def metrics(self) -> list[str]:
        found: list[str] = []

        def walk(n: Node) -> None:
            if n[0] == "metric":
                found.append(n[1])
            elif n[0] not in ("num", "base"):
                walk(n[1])
                walk(n[2])

        walk(self.left)
        walk(self.right)
        return found

    def base_names(self) -> list[str | None]:
        found: list[str | None] = []

        def walk(n: Node) -> None:
            if n[0] == "base":
                found.append(n[1])
            elif n[0] not in ("num", "metric"):
                walk(n[1])
                walk(n[2])

        walk(self.left)
        walk(self.right)
        return found

    def uses_base(self) -> bool:
        def walk(n: Node) -> bool:
            if n[0] == "base":
                return True
            return n[0] not in ("num", "metric") and (walk(n[1]) or walk(n[2]))

        return walk(self.left) or walk(self.right)


@dataclass(frozen=True)
class Rule:
    """A parsed selection rule; :meth:`pick` applies it to ``(value, scores)`` records."""

    text: str
    direction: str  # "max" | "min"
    target: str | None  # None: the primary metric
    conditions: tuple[Condition, ...] = field(default_factory=tuple)

    @property
    def needs_base(self) -> bool:
        """True when a condition compares with the base model's score."""
        return any(c.uses_base() for c in self.conditions)

    def metric_names(self, var: str) -> list[str]:
        """The metric names the rule mentions (as written), so a sweep can track them."""
        names = [self.target] if self.target is not None and self.target != var else []
        for cond in self.conditions:
            names += cond.metrics()
            names += [n for n in cond.base_names() if n is not None]
        return list(dict.fromkeys(names))

    def check(self, var: str, columns: Sequence[str]) -> None:
        """Raise :class:`RuleError` now if a name cannot be resolved against ``columns``."""
        if self.target is not None and self.target != var:
            resolve_metric(self.target, columns)
        for cond in self.conditions:
            self._bind(cond, columns)

    def _bind(self, cond: Condition, columns: Sequence[str]) -> tuple[Node, Node]:
        named = [resolve_metric(m, columns) for m in cond.metrics()]

        def bind(n: Node) -> Node:
            if n[0] == "metric":
                return ("metric", resolve_metric(n[1], columns))
            if n[0] == "base":
                if n[1] is not None:
                    return ("base", resolve_metric(n[1], columns))
                if len(set(named)) != 1:
                    raise RuleError(
                        f"'base' in {cond.text!r} must refer to exactly one metric; write base.METRIC"
                    )
                return ("base", named[0])
            if n[0] == "num":
                return n
            return (n[0], bind(n[1]), bind(n[2]))

        return bind(cond.left), bind(cond.right)

    def satisfied(
        self, scores: Mapping[str, float], base: Mapping[str, float] | None, columns: Sequence[str]
    ) -> bool:
        """True when every condition holds for ``scores`` (NaN fails)."""
        for cond in self.conditions:
            left, right = self._bind(cond, columns)
            a, b = _value(left, scores, base), _value(right, scores, base)
            if math.isnan(a) or math.isnan(b) or not _CMP[cond.op](a, b):
                return False
        return True

    def pick(
        self,
        records: Iterable[tuple[float, Mapping[str, float]]],
        var: str,
        columns: Sequence[str],
        base: Mapping[str, float] | None = None,
    ) -> float:
        """The value of ``var`` the rule selects among ``records`` (validation scores).

        ``columns`` are the tracked metric names; the first is the primary metric.
        """
        if not columns:
            raise RuleError("no metric to select on")
        self.check(var, columns)
        if self.needs_base and base is None:
            raise RuleError(
                f"the rule {self.text!r} compares with 'base' but the base model was not evaluated"
            )
        rows = sorted(records, key=lambda r: r[0])
        feasible = [(v, s) for v, s in rows if self.satisfied(s, base, columns)]
        if not feasible:
            raise RuleError(f"no value of {var} satisfies {self.text!r} ({len(rows)} evaluated)")
        if self.target == var:
            return feasible[-1][0] if self.direction == "max" else feasible[0][0]
        metric = resolve_metric(self.target, columns) if self.target else columns[0]
        sign = 1.0 if self.direction == "max" else -1.0
        best_v, best = None, -math.inf
        for v, s in feasible:
            x = float(s.get(metric, math.nan))
            if not math.isnan(x) and sign * x > best:
                best_v, best = v, sign * x
        if best_v is None:
            raise RuleError(f"every value has a NaN {metric}; nothing to select")
        return best_v


def _value(n: Node, scores: Mapping[str, float], base: Mapping[str, float] | None) -> float:
    kind = n[0]
    if kind == "num":
        return n[1]
    if kind == "metric":
        return float(scores.get(n[1], math.nan))
    if kind == "base":
        return float((base or {}).get(n[1], math.nan))
    a, b = _value(n[1], scores, base), _value(n[2], scores, base)
    if kind == "/":
        return a / b if b != 0 else math.nan
    return {"+": operator.add, "-": operator.sub, "*": operator.mul}[kind](a, b)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks: list[tuple[str, str, int]] = []
        i = 0
        while i < len(text):
            if text[i].isspace():
                i += 1
                continue
            m = _TOKEN.match(text, i)
            if not m:
                raise self.fail(f"unexpected character {text[i]!r}", i)
            kind = m.lastgroup or "op"
            self.toks.append((kind, m.group(kind), m.start(kind)))
            i = m.end()
        self.toks.append(("end", "", len(text)))
        self.i = 0

    def fail(self, message: str, pos: int) -> RuleError:
        return RuleError(
            f"bad selection rule {self.text!r}: {message} at position {pos + 1}; "
            "expected e.g. 'max', 'min ppl' or 'max l where ppl <= base + 0.5'"
        )

    def peek(self) -> tuple[str, str, int]:
        return self.toks[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def rule(self) -> Rule:
        _, word, pos = self.take()
        if word not in ("max", "min"):
            raise self.fail(f"a rule starts with 'max' or 'min', not {word or 'nothing'!r}", pos)
        target = None
        if self.peek()[0] == "name" and self.peek()[1] != "where":
            target = self.take()[1]
        conds: list[Condition] = []
        if self.peek()[1] == "where":
            self.take()
            conds.append(self.condition())
            while self.peek()[1] == "and":
                self.take()
                conds.append(self.condition())
        kind, word, pos = self.peek()
        if kind != "end":
            raise self.fail(f"unexpected {word!r}", pos)
        return Rule(self.text, self.toks[0][1], target, tuple(conds))

    def condition(self) -> Condition:
        start = self.peek()[2]
        left = self.sum()
        kind, op, pos = self.take()
        if op not in _CMP:
            raise self.fail(f"expected a comparison (<=, <, >=, >), got {op or 'the end'!r}", pos)
        right = self.sum()
        end = self.peek()[2]
        return Condition(left, op, right, self.text[start:end].strip())

    def sum(self) -> Node:
        node = self.prod()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            node = (op, node, self.prod())
        return node

    def prod(self) -> Node:
        node = self.unary()
        while self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            node = (op, node, self.unary())
        return node

    def unary(self) -> Node:
        kind, text, pos = self.take()
        if text == "-":
            return ("-", ("num", 0.0), self.unary())
        if kind == "num":
            return ("num", float(text))
        if kind == "name":
            if text in ("where", "and", "max", "min"):
                raise self.fail(f"unexpected {text!r}", pos)
            if text == "base":
                return ("base", None)
            if text.startswith("base."):
                return ("base", text[len("base.") :])
            return ("metric", text)
        if text == "(":
            node = self.sum()
            if self.take()[1] != ")":
                raise self.fail("missing ')'", pos)
            return node
        raise self.fail(f"unexpected {text or 'end of rule'!r}", pos)


def parse_rule(text: str) -> Rule:
    """Parse a selection rule (see the module docstring); errors are :class:`RuleError`."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("empty selection rule; expected e.g. 'max' or 'max l where ppl <= base + 0.5'")
    return _Parser(text.strip()).rule()


@dataclass
class SearchResult:
    """The pick and every ``(value, validation scores)`` the search evaluated, in order."""

    pick: float
    evaluated: list[tuple[float, Scores]]
    grid_size: int
    method: str


def search(
    objective: Objective,
    values: Sequence[float],
    rule: Rule,
    var: str,
    columns: Callable[[], Sequence[str]] | Sequence[str],
    base: Mapping[str, float] | None = None,
    method: str = "grid",
    coarse: int = 5,
    batch: Callable[[list[float]], list[Scores]] | None = None,
) -> SearchResult:
    """Evaluate ``objective`` over ``values`` (``method="grid"``) or a coarse-to-fine subset.

    ``refine``: evaluate every ``coarse``-th value (and the last), pick by ``rule``, then evaluate
    every value strictly between the coarse neighbours of that pick, and pick again among all.
    On a grid of n values that is about n/coarse + 2*(coarse-1) evaluations instead of n; the
    result equals the grid's pick whenever the score is unimodal on the coarse scale (for a
    ``max l where ...`` rule: when the condition holds on an interval).
    ``columns`` is the tracked metric list (or a callable giving it after the first evaluation).
    ``batch``, if given, evaluates a whole stage at once (the values of a grid, the coarse values,
    then the fine ones), in any order: a sweep on Ray shares each stage among its actors.
    """
    if method not in SEARCHES:
        raise PemarithError(
            f"unknown search {method!r}{did_you_mean(method, SEARCHES)}; choose {' or '.join(SEARCHES)}"
        )
    if coarse < 2:
        raise PemarithError(f"--coarse must be at least 2, got {coarse}")
    values = sorted(values)
    done: dict[int, Scores] = {}
    order: list[int] = []

    def run(indices: Sequence[int]) -> None:
        todo = [i for i in indices if i not in done]
        scores = batch([values[i] for i in todo]) if batch else [objective(values[i]) for i in todo]
        for i, s in zip(todo, scores):
            done[i] = s
            order.append(i)

    def pick() -> float:
        cols = columns() if callable(columns) else columns
        return rule.pick([(values[i], done[i]) for i in sorted(done)], var, cols, base)

    n = len(values)
    if method == "grid" or n <= 2 * coarse:
        run(range(n))
        return SearchResult(pick(), [(values[i], done[i]) for i in order], n, "grid")
    coarse_idx = sorted({*range(0, n, coarse), n - 1})
    run(coarse_idx)
    best = values.index(pick())
    pos = coarse_idx.index(best)
    lo = coarse_idx[pos - 1] if pos > 0 else best
    hi = coarse_idx[pos + 1] if pos + 1 < len(coarse_idx) else best
    run(range(lo + 1, hi))
    return SearchResult(pick(), [(values[i], done[i]) for i in order], n, "refine")
