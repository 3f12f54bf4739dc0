"""Property-based fuzzing (hypothesis) of the training config loader, in-process.

``RunConfig.from_dict`` and ``load_config`` (YAML and JSON files) get mutated versions of a valid config:
every field, nested ones included, replaced by values of the wrong type, out of range, NaN/inf, huge, empty,
unicode, nested containers, unknown keys, and whole documents that are not mappings. The property: the
result is a config or a ProGRPOConfigError whose message is non-empty, never a TypeError / KeyError /
AttributeError / ValueError traceback. Deterministic (``derandomize=True``) with bounded examples.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progrpo.errors import ProGRPOConfigError
from progrpo.train.run_config import RunConfig, load_config

BASE = RunConfig(model="tiny:sd", prompts=["a cat"], iterations=2).to_dict()
SETTINGS = settings(max_examples=400, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _paths(data: dict, prefix: tuple = ()) -> list[tuple]:
    paths = []
    for key, value in data.items():
        paths.append((*prefix, key))
        if isinstance(value, dict) and key != "rewards":
            paths += _paths(value, (*prefix, key))
    return paths


PATHS = _paths(BASE) + [("rewards", "jpeg_compressibility"), ("rewards", "jpeg_compressibility", "weight")]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0, -1, 1, 2**63, "", " ", "nan", "1e-4", "x" * 10_000,
                     "5:24, 7:12", "3:8, 2:4", "1:1", "../../etc", "\x00", "🙂", "cuda:99", "float64", "tiny:nope",
                     "embedded:digits_flow", "/no/such/folder"]),
    st.text(max_size=20),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _mutate(data: dict, path: tuple, value) -> dict:
    mutated = copy.deepcopy(data)
    node = mutated
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return mutated


def _accepts_or_explains(call) -> None:
    try:
        call()
    except ProGRPOConfigError as error:
        assert str(error).strip(), "an empty error message"


@SETTINGS
@given(path=st.sampled_from(PATHS), value=VALUES)
def test_from_dict_raises_only_config_errors(path, value):
    _accepts_or_explains(lambda: RunConfig.from_dict(_mutate(BASE, path, value)))


@SETTINGS
@given(extra=st.dictionaries(st.text(max_size=12), VALUES, min_size=1, max_size=3), section=st.sampled_from(
    [(), ("rollout",), ("lora",), ("optim",), ("grpo",)]))
def test_unknown_keys_are_named(extra, section):
    data = copy.deepcopy(BASE)
    target = data
    for key in section:
        target = target[key]
    added = [key for key in extra if key not in target]
    target.update(extra)
    if not added:
        return
    with pytest.raises(ProGRPOConfigError, match="unknown config key"):
        RunConfig.from_dict(data)


@settings(max_examples=150, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(document=st.one_of(VALUES, st.text(max_size=200), st.binary(max_size=64)), suffix=st.sampled_from(
    [".yaml", ".json", ".yml"]))
def test_load_config_files_raise_only_config_errors(tmp_path_factory, document, suffix):
    path = tmp_path_factory.mktemp("config") / f"run{suffix}"
    if isinstance(document, bytes):
        path.write_bytes(document)
    elif isinstance(document, str):
        path.write_text(document, encoding="utf-8")
    else:
        path.write_text(json.dumps(document), encoding="utf-8")
    _accepts_or_explains(lambda: load_config(path))


def test_the_fuzz_base_is_valid_and_errors_are_reachable():
    assert RunConfig.from_dict(BASE).to_dict() == BASE
    with pytest.raises(ProGRPOConfigError, match="optim.lr"):
        RunConfig.from_dict(_mutate(BASE, ("optim", "lr"), math.nan))
