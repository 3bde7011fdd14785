"""Expressions over modules, reduced to the normal form ``sum_i c_i * theta_i``.

Grammar (no ``eval``; a small recursive-descent parser)::

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

import re
from collections.abc import Iterable
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


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, message: str, tok: _Tok) -> ExprError:
        return ExprError(message, self.text, tok.pos)

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.fail("empty expression", self.peek())
        node = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            what = "')'" if tok.text == ")" else f"{tok.text!r}"
            raise self.fail(f"unexpected {what} (missing operator?)", tok)
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek().text in ("+", "-") and self.peek().kind == "op":
            op = self.take()
            node = (op.text, node, self.term(), op.pos)
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().text in ("*", "/") and self.peek().kind == "op":
            op = self.take()
            node = (op.text, node, self.unary(), op.pos)
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("+", "-"):
            self.take()
            inner = self.unary()
            return ("neg", inner, tok.pos) if tok.text == "-" else inner
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.peek().text == "**":
            op = self.take()
            return ("**", base, self.unary(), op.pos)
        return base

    def atom(self) -> Node:
        tok = self.take()
        if tok.kind == "num":
            return ("num", float(tok.text), tok.pos)
        if tok.kind == "name":
            return ("name", tok.text, tok.pos)
        if tok.text == "(":
            node = self.expr()
            close = self.peek()
            if close.text != ")":
                raise self.fail("missing ')'", close)
            self.take()
            return node
        if tok.kind == "end":
            raise self.fail("unexpected end of expression", tok)
        raise self.fail(f"unexpected {tok.text!r}", tok)


@dataclass(frozen=True)
class _Lin:
    """A value during reduction: a number (``terms is None``) or a linear form over modules."""

    value: float = 0.0
    terms: dict[str, float] | None = None

    @property
    def is_number(self) -> bool:
        return self.terms is None


def _scale(terms: dict[str, float], c: float) -> dict[str, float]:
    return {k: c * v for k, v in terms.items()}


def _add(a: dict[str, float], b: dict[str, float], sign: float) -> dict[str, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + sign * v
    return out


class Expression:
    """A parsed expression; :meth:`normal_form` reduces it for given variable bindings.

    Parse once and reduce many times (a lambda sweep binds ``l`` to each grid value).
    """

    def __init__(self, text: str):
        self.text = text
        self.tree = _Parser(text).parse()

    def identifiers(self) -> list[str]:
        """Every NAME in order of first appearance."""
        seen: list[str] = []

        def walk(node: Node) -> None:
            if node[0] == "name":
                if node[1] not in seen:
                    seen.append(node[1])
            elif node[0] == "neg":
                walk(node[1])
            elif node[0] != "num":
                walk(node[1])
                walk(node[2])

        walk(self.tree)
        return seen

    def normal_form(self, names: Iterable[str] | None = None, **vars: float) -> dict[str, float]:
        """``{module: coefficient}`` in order of first appearance.

        ``names`` are the modules; identifiers bound in ``vars`` are numbers. With
        ``names=None`` every unbound identifier is a module.
        """
        known = None if names is None else list(names)
        for var in vars:
            if known is not None and var in known:
                raise ExprError(f"{var!r} is both a module and a variable; rename one", self.text)
        result = self._reduce(self.tree, known, vars)
        if result.is_number:
            raise ExprError("the expression names no module", self.text)
        return result.terms or {}

    def _reduce(self, node: Node, known: list[str] | None, vars: dict[str, float]) -> _Lin:
        kind = node[0]
        if kind == "num":
            return _Lin(node[1])
        if kind == "name":
            ident, pos = node[1], node[2]
            if ident in vars:
                return _Lin(float(vars[ident]))
            if known is None or ident in known:
                return _Lin(terms={ident: 1.0})
            hint = did_you_mean(ident, [*known, *vars])
            raise ExprError(f"unknown name {ident!r}{hint}", self.text, pos)
        if kind == "neg":
            inner = self._reduce(node[1], known, vars)
            return _Lin(-inner.value) if inner.is_number else _Lin(terms=_scale(inner.terms, -1.0))
        op, pos = kind, node[3]
        a = self._reduce(node[1], known, vars)
        b = self._reduce(node[2], known, vars)
        if op in ("+", "-"):
            sign = 1.0 if op == "+" else -1.0
            if a.is_number and b.is_number:
                return _Lin(a.value + sign * b.value)
            if a.is_number or b.is_number:
                raise ExprError(f"cannot {'add' if op == '+' else 'subtract'} a number and a module "
                                "(scale a module with '*' instead)", self.text, pos)
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
        if op == "**":
            if not (a.is_number and b.is_number):
                raise ExprError("a power of a module is not linear", self.text, pos)
            try:
                return _Lin(float(a.value**b.value))
            except (OverflowError, ZeroDivisionError) as exc:
                raise ExprError(f"bad power ({exc})", self.text, pos) from None
        raise AssertionError(f"unknown node {kind}")  # pragma: no cover - parser emits no other


def parse(text: str) -> Expression:
    """Parse ``text``; syntax errors raise :class:`ExprError` with the position."""
    return Expression(text)


def normal_form(text: str, names: Iterable[str] | None = None, **vars: float) -> dict[str, float]:
    """Reduce ``text`` to ``{module: coefficient}``; see :class:`Expression`."""
    return Expression(text).normal_form(names, **vars)


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
