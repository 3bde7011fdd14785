"""The expression language: normal forms, free variables, and errors with positions."""

import doctest

import pytest

import pemarith.expr as expr_mod
from pemarith.errors import ExprError, PemarithError
from pemarith.expr import Expression, format_terms, normal_form


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a + b", {"a": 1.0, "b": 1.0}),
        ("0.5*a + 0.5*b", {"a": 0.5, "b": 0.5}),
        ("-a", {"a": -1.0}),
        ("-(-a)", {"a": 1.0}),
        ("a - b + c", {"a": 1.0, "b": -1.0, "c": 1.0}),
        ("2*(a - b)/4", {"a": 0.5, "b": -0.5}),
        ("a*2 + 3*(b*2)", {"a": 2.0, "b": 6.0}),
        ("a - a", {"a": 0.0}),
        ("1e-3*x + .5*y", {"x": 0.001, "y": 0.5}),
        ("2**-1*a", {"a": 0.5}),
        ("+a", {"a": 1.0}),
        ("cls_amazon + (lm_yelp - lm_amazon)", {"cls_amazon": 1.0, "lm_yelp": 1.0, "lm_amazon": -1.0}),
    ],
)
def test_normal_form(text, expected):
    assert normal_form(text) == pytest.approx(expected)
    assert list(normal_form(text)) == list(expected)  # order of first appearance


def test_free_variables_bound_by_caller():
    e = Expression("l*a + (1-l)*b")
    assert e.normal_form(["a", "b"], l=0.3) == pytest.approx({"a": 0.3, "b": 0.7})
    assert e.normal_form(["a", "b"], l=1.0) == pytest.approx({"a": 1.0, "b": 0.0})
    # the paper's detoxification of an instruction-tuned module: (1+l)*t1 - l*t_toxic
    assert normal_form("(1+l)*t1 - l*t_toxic", l=0.4) == pytest.approx({"t1": 1.4, "t_toxic": -0.4})
    # the paper's domain transfer analogy
    got = normal_form("l*cls_a + (1-l)*(lm_b - lm_a)", l=0.25)
    assert got == pytest.approx({"cls_a": 0.25, "lm_b": 0.75, "lm_a": -0.75})


@pytest.mark.parametrize(
    "text, message, position",
    [
        ("a*b", "product of two modules", 1),
        ("a/b", "division by a module", 1),
        ("2**a", "power of a module", 1),
        ("a + 1", "number and a module", 2),
        ("(a + b", "missing ')'", 6),
        ("a b", "missing operator", 2),
        ("a $ b", "unexpected character", 2),
        ("a +", "unexpected end", 3),
        ("a/0", "division by zero", 1),
        ("", "empty expression", 0),
    ],
)
def test_errors_carry_position(text, message, position):
    with pytest.raises(ExprError) as info:
        normal_form(text)
    assert message in str(info.value)
    assert info.value.position == position
    assert isinstance(info.value, PemarithError)
    assert "\n" not in str(info.value)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ExprError, match=r"unknown name 'toxc' \(did you mean 'toxic'\?\)"):
        normal_form("-toxc", names=["toxic", "base"])


def test_number_only_and_name_clash():
    with pytest.raises(ExprError, match="names no module"):
        normal_form("l*2", l=0.5)
    with pytest.raises(ExprError, match="both a module and a variable"):
        normal_form("a + b", names=["a", "b"], a=1.0)


def test_no_eval():
    # Python would evaluate these; the parser refuses them as syntax.
    for text in ["__import__('os')", "a.b", "a[0]", "a if b else c", "lambda: a"]:
        with pytest.raises(ExprError):
            normal_form(text)


@pytest.mark.parametrize(
    "terms, text",
    [
        ({"a": 0.3, "b": 0.7}, "0.3*a + 0.7*b"),
        ({"toxic": -1.0}, "-toxic"),
        ({"a": 1.0, "b": -0.5}, "a - 0.5*b"),
        ({"a": 1 - 0.7}, "0.3*a"),
    ],
)
def test_format_terms_round_trips(terms, text):
    assert format_terms(terms) == text
    assert normal_form(text) == pytest.approx(terms)


def test_module_doctests():
    assert doctest.testmod(expr_mod).failed == 0
