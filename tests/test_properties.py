"""Property-based tests (hypothesis): whatever the input, the expression parser, the safetensors
header reader, adapter_config.json and the bake index give a result or pemarith's own error,
never another exception. Budgets are bounded so that the whole file takes seconds."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pemarith
from pemarith.errors import PemarithError
from pemarith.expr import normal_form
from pemarith.io import read_safetensors_header

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@FAST
@given(st.text(alphabet="ab l0123456789.e+-*/()_ ", max_size=40), st.floats(-10, 10))
def test_expressions_give_a_normal_form_or_an_expr_error(text, value):
    try:
        terms = normal_form(text, ["a", "b"], {"l": value})
    except PemarithError:
        return
    assert set(terms) <= {"a", "b"} and all(np.isfinite(c) for c in terms.values())


@FAST
@given(st.text(alphabet="ab+-*/()2. ", min_size=1, max_size=30))
@example("2//2")
@example("a**b")
def test_parsing_agrees_with_python_on_numbers(text):
    """Where Python evaluates a module-free expression to a float, so does the parser."""
    expr = text.replace("a", "2").replace("b", "3")
    try:
        expected = eval(expr, {"__builtins__": {}})  # noqa: S307 - digits and operators only
    except Exception:  # noqa: BLE001 - Python's own errors differ from ours; only results compare
        return
    if not isinstance(expected, (int, float)) or not np.isfinite(expected):
        return
    if "//" in expr:  # Python's floor division: not in the grammar (which has + - * / **)
        with pytest.raises(PemarithError):
            normal_form(f"({expr})*x")
        return
    terms = normal_form(f"({expr})*x")
    assert np.isclose(terms["x"], expected, rtol=1e-9, atol=1e-12)


header_entries = st.dictionaries(
    st.text(max_size=6),
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "x"]) | json_values,
            "shape": st.lists(st.integers(-1, 4), max_size=3) | json_values,
            "data_offsets": st.lists(st.integers(-1, 40), min_size=2, max_size=2) | json_values,
        }
    ),
    max_size=4,
)


@FAST
@given(
    header=header_entries | json_values,
    data=st.binary(max_size=48),
    lie=st.integers(0, 2**64 - 1) | st.none(),
)
def test_headers_give_tensors_or_an_adapter_error(tmp_path_factory, header, data, lie):
    path = tmp_path_factory.mktemp("h") / "x.safetensors"
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if lie is None else lie) + text + data)
    try:
        infos, meta = read_safetensors_header(path)
    except PemarithError:
        return
    assert all(isinstance(v, str) for v in meta.values())
    assert sum(i.end - i.start for i in infos.values()) == len(data)


@FAST
@given(
    changes=st.dictionaries(
        st.sampled_from(
            [
                "r",
                "lora_alpha",
                "peft_type",
                "use_rslora",
                "target_modules",
                "init_lora_weights",
                "rank_pattern",
                "bias",
                "use_dora",
            ]
        ),
        json_values,
        max_size=3,
    )
)
def test_configs_give_an_adapter_or_an_adapter_error(tmp_path_factory, adapters, changes):
    p = tmp_path_factory.mktemp("c") / "a"
    shutil.copytree(adapters["a"], p)
    cfg = json.loads((p / "adapter_config.json").read_text())
    (p / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
    try:
        pem = pemarith.load(p)
        pem.save(p.parent / "out", mode="exact")
    except PemarithError:
        return


@FAST
@given(
    index=st.fixed_dictionaries(
        {
            "weight_map": st.dictionaries(
                st.sampled_from(["emb.weight", "lin0.weight", "lin1.weight", "x"]),
                st.sampled_from(["model.safetensors", "../m.safetensors", "/abs", ""]) | json_values,
                max_size=4,
            )
        }
    )
    | json_values
)
def test_bake_indexes_give_a_checkpoint_or_an_error(tmp_path_factory, adapters, index):
    import torch
    from helpers_adapters import TinyModel
    from safetensors.torch import save_file

    from pemarith.bake import bake

    root = tmp_path_factory.mktemp("b")
    base = root / "base"
    base.mkdir()
    torch.manual_seed(0)
    save_file(TinyModel().state_dict(), str(base / "model.safetensors"))
    (base / "model.safetensors.index.json").write_text(json.dumps(index))
    try:
        bake(pemarith.load(adapters["a"]), base, root / "out")
    except PemarithError:
        assert not (root / "out").exists()
    assert sorted(p.name for p in base.iterdir()) == ["model.safetensors", "model.safetensors.index.json"]
    assert Path(root / "m.safetensors").exists() is False
