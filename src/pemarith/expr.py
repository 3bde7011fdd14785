"""Expressions over modules, reduced to the normal form ``sum_i c_i * theta_i``.

Grammar (no ``eval``; an operator-precedence parser without recursion)::

    expr   := term (("+" | "-") term)*
    term   := unary (("*" | "/") unary)*
    unary  := ("+" | "-") unary | power
    power  := atom ("**" unary)?
    atom   := NUMBER | NAME | "(" expr ")"

A NAME is a module unless the caller binds it as a scalar variable (``l`` in
``l*a + (1-l)*b`` with ``l=0.3``). Unary minus on a module is the PEM negation operator.
Everything must stay linear in the modules: ``a*b``, ``a/b``, ``2**a`` and ``a + 1`` are
errors that carry the position of the offending operator.

>>> normal_form("l*a + (1-l)*b", l=0.3)
{'a': 0.3, 'b': 0.7}
>>> format_terms(normal_form("-(toxic)"))
'-toxic'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import ExprError, did_you_mean

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|[-+*/()]))"
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # "num" | "name" | "op" | "end"
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        m = _TOKEN.match(text, i)
        if not m or m.end() == i:
            raise ExprError(f"unexpected character {text[i]!r}", text, i)
        kind = m.lastgroup or "op"
        start = m.start(kind)
        toks.append(_Tok(kind, m.group(kind), start))
        i = m.end()
    toks.append(_Tok("end", "", len(text)))
    return toks


# The AST: ("num", value, pos) | ("name", ident, pos) | ("neg", node, pos)
#          | (op, left, right, pos) for op in + - * / **
Node = tuple


_BINARY = {"+": (1, "left"), "-": (1, "left"), "*": (2, "left"), "/": (2, "left"), "**": (4, "right")}
_UNARY_PREC = 3  # below "**" (``-a**2`` is ``-(a**2)``), above "*" and "+"


class _Parser:
    """Operator precedence (shunting-yard) with explicit stacks: no recursion, so an expression
    of any depth or length parses (a generated sum of thousands of terms, 200 nested brackets).
    It accepts exactly the grammar of the module docstring."""

    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)

    def fail(self, message: str, tok: _Tok) -> ExprError:
        return ExprError(message, self.text, tok.pos)

    def parse(self) -> Node:
        toks = self.toks
        if toks[0].kind == "end":
            raise self.fail("empty expression", toks[0])
        out: list[Node] = []
        ops: list[_Tok] = []  # operators, "(" and unary signs (text "u+" / "u-")
        operand = True  # expecting an operand
        for tok in toks:
            if operand:
                if tok.kind == "num":
                    out.append(("num", float(tok.text), tok.pos))
                    operand = False
                elif tok.kind == "name":
                    out.append(("name", tok.text, tok.pos))
                    operand = False
                elif tok.text in ("+", "-"):
                    ops.append(_Tok("op", "u" + tok.text, tok.pos))
                elif tok.text == "(":
                    ops.append(tok)
                elif tok.kind == "end":
                    raise self.fail("unexpected end of expression", tok)
                else:
                    raise self.fail(f"unexpected {tok.text!r}", tok)
                continue
            if tok.kind == "op" and tok.text in _BINARY:
                prec, assoc = _BINARY[tok.text]
                while ops and ops[-1].text != "(":
                    top = _UNARY_PREC if ops[-1].text in ("u+", "u-") else _BINARY[ops[-1].text][0]
                    if top > prec or (top == prec and assoc == "left"):
                        self._apply(ops.pop(), out)
                    else:
                        break
                ops.append(tok)
                operand = True
            elif tok.text == ")":
                while ops and ops[-1].text != "(":
                    self._apply(ops.pop(), out)
                if not ops:
                    raise self.fail("unexpected ')' (missing operator?)", tok)
                ops.pop()
            elif tok.kind == "end":
                while ops:
                    if ops[-1].text == "(":
                        raise self.fail("missing ')'", tok)
                    self._apply(ops.pop(), out)
            else:
                inside = any(o.text == "(" for o in ops)
                raise self.fail(
                    "missing ')'" if inside else f"unexpected {tok.text!r} (missing operator?)", tok
                )
        (node,) = out
        return node

    @staticmethod
    def _apply(op: _Tok, out: list[Node]) -> None:
        if op.text in ("u+", "u-"):
            inner = out.pop()
            out.append(("neg", inner, op.pos) if op.text == "u-" else inner)
        else:
            right, left = out.pop(), out.pop()
            out.append((op.text, left, right, op.pos))


@dataclass(frozen=True)
class _Lin:
    """A value during reduction: a number (``terms is None``) or a linear form over modules."""

    value: float = 0.0
    terms: dict[str, float] | None = None

    @property
    def is_number(self) -> bool:
        return self.terms is None


def _scale(terms: dict[str, float] | None, c: float) -> dict[str, float]:
    assert terms is not None  # callers check is_number first
    return {k: c * v for k, v in terms.items()}


def _add(a: dict[str, float] | None, b: dict[str, float] | None, sign: float) -> dict[str, float]:
    assert a is not None and b is not None  # callers check is_number first
    # In place: every intermediate form is made by one reduction step and used once, so a long
    # generated sum costs linear, not quadratic, time.
    for k, v in b.items():
        a[k] = a.get(k, 0.0) + sign * v
    return a


class Expression:
    """A parsed expression; :meth:`normal_form` reduces it for given variable bindings.

    Parse once and reduce many times (a lambda sweep binds ``l`` to each grid value).
    """

    def __init__(self, text: str):
        self.text = text
        self.tree = _Parser(text).parse()

    def identifiers(self) -> list[str]:
        """Every NAME in order of first appearance."""
        seen: dict[str, None] = {}
        stack = [self.tree]
        while stack:
            node = stack.pop()
            if node[0] == "name":
                seen.setdefault(node[1])
            elif node[0] == "neg":
                stack.append(node[1])
            elif node[0] != "num":
                stack += (node[2], node[1])  # left first
        return list(seen)

    def normal_form(
        self, names: Iterable[str] | None = None, variables: Mapping[str, float] | None = None, **vars: float
    ) -> dict[str, float]:
        """``{module: coefficient}`` in order of first appearance.

        ``names`` are the modules; identifiers bound in ``variables`` (or ``vars``) are numbers.
        With ``names=None`` every unbound identifier is a module. ``variables`` is a namespace
        of its own, so a variable may be called anything (``mode``, ``names``, ``text``).
        """
        bound = {**(variables or {}), **vars}
        known = None if names is None else list(names)
        for var in bound:
            if known is not None and var in known:
                raise ExprError(f"{var[:100]!r} is both a module and a variable; rename one", self.text)
        result = self._reduce(known, bound)
        if result.is_number:
            raise ExprError("the expression names no module", self.text)
        terms = result.terms or {}
        for name, c in terms.items():
            if not math.isfinite(c):
                raise ExprError(
                    f"the coefficient of {name[:100]!r} is {c} (an overflow); use smaller numbers", self.text
                )
        return terms

    def _reduce(self, known: list[str] | None, vars: Mapping[str, float]) -> _Lin:
        """Post-order reduction of the tree with an explicit stack (no recursion)."""
        values: list[_Lin] = []
        stack: list[tuple[Node, bool]] = [(self.tree, False)]
        while stack:
            node, ready = stack.pop()
            kind = node[0]
            if kind == "num":
                values.append(_Lin(node[1]))
            elif kind == "name":
                values.append(self._name(node, known, vars))
            elif not ready:
                stack.append((node, True))
                if kind == "neg":
                    stack.append((node[1], False))
                else:
                    stack += ((node[2], False), (node[1], False))  # left reduced first
            elif kind == "neg":
                inner = values.pop()
                values.append(
                    _Lin(-inner.value) if inner.is_number else _Lin(terms=_scale(inner.terms, -1.0))
                )
            else:
                b, a = values.pop(), values.pop()
                values.append(self._binary(kind, a, b, node[3]))
        (result,) = values
        return result

    def _name(self, node: Node, known: list[str] | None, vars: Mapping[str, float]) -> _Lin:
        ident, pos = node[1], node[2]
        if ident in vars:
            return _Lin(float(vars[ident]))
        if known is None or ident in known:
            return _Lin(terms={ident: 1.0})
        hint = did_you_mean(ident, [*known, *vars])
        raise ExprError(f"unknown name {ident[:100]!r}{hint}", self.text, pos)

    def _binary(self, op: str, a: _Lin, b: _Lin, pos: int) -> _Lin:
        if op in ("+", "-"):
            sign = 1.0 if op == "+" else -1.0
            if a.is_number and b.is_number:
                return _Lin(a.value + sign * b.value)
            if a.is_number or b.is_number:
                raise ExprError(
                    f"cannot {'add' if op == '+' else 'subtract'} a number and a module "
                    "(scale a module with '*' instead)",
                    self.text,
                    pos,
                )
            return _Lin(terms=_add(a.terms, b.terms, sign))
        if op == "*":
            if a.is_number and b.is_number:
                return _Lin(a.value * b.value)
            if not a.is_number and not b.is_number:
                raise ExprError("a product of two modules is not linear", self.text, pos)
            num, mod = (a, b) if a.is_number else (b, a)
            return _Lin(terms=_scale(mod.terms, num.value))
        if op == "/":
            if not b.is_number:
                raise ExprError("division by a module is not linear", self.text, pos)
            if b.value == 0.0:
                raise ExprError("division by zero", self.text, pos)
            return _Lin(a.value / b.value) if a.is_number else _Lin(terms=_scale(a.terms, 1.0 / b.value))
        if not (a.is_number and b.is_number):  # "**"
            raise ExprError("a power of a module is not linear", self.text, pos)
        try:
            value = a.value**b.value
        except (OverflowError, ZeroDivisionError) as exc:
            raise ExprError(f"bad power ({exc})", self.text, pos) from None
        if isinstance(value, complex):
            raise ExprError(f"{a.value:g}**{b.value:g} is not a real number", self.text, pos)
        return _Lin(float(value))


def parse(text: str) -> Expression:
    """Parse ``text``; syntax errors raise :class:`ExprError` with the position."""
    return Expression(text)


def normal_form(
    text: str, names: Iterable[str] | None = None, variables: Mapping[str, float] | None = None, **vars: float
) -> dict[str, float]:
    """Reduce ``text`` to ``{module: coefficient}``; see :class:`Expression`."""
    return Expression(text).normal_form(names, variables, **vars)


def _fmt(c: float) -> str:
    return format(c, ".12g")


def format_terms(terms: dict[str, float]) -> str:
    """Canonical text of a normal form: ``0.3*a + 0.7*b``, ``-toxic``, ``a - 0.5*b``."""
    parts: list[str] = []
    for name, c in terms.items():
        mag = abs(c)
        body = name if mag == 1.0 else f"{_fmt(mag)}*{name}"
        if not parts:
            parts.append(f"-{body}" if c < 0 else body)
        else:
            parts.append(f"- {body}" if c < 0 else f"+ {body}")
    return " ".join(parts) if parts else "0"
