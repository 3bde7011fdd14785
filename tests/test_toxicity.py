"""The offline toxicity scorer (profanity-check; not Detoxify)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("profanity_check")

from pemarith.errors import PemarithError  # noqa: E402
from pemarith.hf import toxicity  # noqa: E402


def test_toxic_sentence_scores_above_benign() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a scikit-learn version mismatch would warn here
        s = toxicity.score(
            [
                "You are a stupid fucking idiot and I hate you",
                "Thank you for the lovely dinner, see you tomorrow",
            ]
        )
    assert s.shape == (2,) and s.dtype == np.float64
    assert s[0] > 0.5 > s[1]
    assert ((0 <= s) & (s <= 1)).all()


def test_summarise() -> None:
    got = toxicity.summarise([0.1, 0.9, 0.6, 0.2])
    assert got == {"mean": pytest.approx(0.45), "share_toxic": 0.5, "n": 4}
    assert toxicity.summarise([0.4, 0.6], threshold=0.3)["share_toxic"] == 1.0
    with pytest.raises(PemarithError):
        toxicity.summarise([])


def test_bad_inputs() -> None:
    assert toxicity.score([]).shape == (0,)
    with pytest.raises(PemarithError, match="list of texts"):
        toxicity.score("one string")
    with pytest.raises(PemarithError, match="did you mean"):
        toxicity.score(["x"], scorer="profanity_check")
