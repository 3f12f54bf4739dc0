"""Property-based fuzzing (hypothesis) of every Pro-GRPO node's widget inputs through the HTTP API.

For each node, a small valid graph on the shipped digits model is the base; each example replaces ONE widget
value (its type, range and options read from /object_info) with an invalid one (out of range, NaN/inf, a
wrong type, a value not among the options) or an arbitrary string (empty, 100k characters, unicode, paths,
prune schedules that do not fit the group). The property:

* an invalid value is refused: HTTP 400 whose node errors name the input, or an execution error of that
  node (ProGRPOConfigError) whose message names the input; it never runs to success;
* an arbitrary string either works or is refused the same way;
* never another exception type (TypeError, KeyError... = a traceback for the user), never a hang (every
  prompt finishes within a bounded wait), never a dead server.

Deterministic (``derandomize=True``, no example database) with bounded examples per node, so CI is stable.
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from testkit.comfy_graphs import LOADER, alive, execution_error, expanded_sampler, reward, train_loop
from testkit.comfy_harness import requires_comfyui

pytestmark = [pytest.mark.slow, requires_comfyui]

WAIT = 60.0  # seconds a fuzzed prompt may take before it counts as a hang
EXAMPLES = 100
ERROR_TYPES = ("ProGRPOConfigError",)
#: a schedule is checked against the group where it is used: the sampler's error names its prune_schedule input.
CONSUMER = {"ProGRPOPruneSchedule": ("11", "prune_schedule")}


def _preview_any(source: list) -> dict:
    return {"class_type": "PreviewAny", "inputs": {"source": source}}


def _scored(batch: int = 4) -> dict:
    return {
        "40": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": batch, "color": 0}},
        "41": reward(),
        "42": {"class_type": "ProGRPORewardScore", "inputs": {"images": ["40", 0], "reward": ["41", 0],
                                                               "prompts": ""}},
    }


def _bases() -> dict[str, tuple[str, dict]]:
    """node type -> (id of the fuzzed node, a valid prompt around it)."""
    sampler = expanded_sampler(group_size=4, steps=3)
    schedule = {**sampler, "T": {"class_type": "ProGRPOPruneSchedule", "inputs": {"checkpoints": "1:3, 2:2"}}}
    schedule["11"] = {**schedule["11"], "inputs": {**schedule["11"]["inputs"], "prune_schedule": ["T", 0]}}
    policy = {
        "1": LOADER,
        "10": {"class_type": "CLIPTextEncode", "inputs": {"text": "a handwritten digit 3", "clip": ["1", 1]}},
        "14": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "12": {"class_type": "VAEEncode", "inputs": {"pixels": ["14", 0], "vae": ["1", 2]}},
        "T": {"class_type": "ProGRPOSampler", "inputs": {"dynamics": "flow_sde", "noise_level": -1.0}},
        "21": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 2,
                                                          "denoise": 1.0}},
        "22": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["10", 0]}},
        "23": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "24": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["23", 0], "guider": ["22", 0], "sampler": ["T", 0], "sigmas": ["21", 0],
            "latent_image": ["12", 0]}},
        "25": {"class_type": "PreviewAny", "inputs": {"source": ["24", 0]}},
    }
    loop = train_loop("fuzz_run")
    loop["T"] = loop.pop("3")
    loop["4"]["inputs"]["images"] = ["T", 2]
    step = {**expanded_sampler(), "T": {"class_type": "ProGRPOTrainStep", "inputs": {
        "model": ["1", 0], "rollout": ["11", 1], "lr": 0.01, "rank": 2, "alpha": 2.0, "seed": 0}},
        "20": _preview_any(["T", 2])}
    save = train_loop("fuzz_save")
    del save["4"]
    save["T"] = {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["3", 1], "name": "fuzz_lora"}}
    grid = {"1": LOADER, "2": reward("digit_alignment"), "T": {"class_type": "ProGRPOPromptGrid", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "prompts": "a handwritten digit 2",
        "samples_per_prompt": 1, "width": 16, "height": 16, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "simple", "seed": 0, "negative_prompt": "", "reward": ["2", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["T", 0]}}}
    evaluation = {"1": LOADER, "2": reward(), "T": {"class_type": "ProGRPOEvaluation", "inputs": {
        "model_before": ["1", 0], "model_after": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
        "prompts": "a handwritten digit 2", "reward_1": ["2", 0], "samples_per_prompt": 1, "width": 16, "height": 16,
        "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "seed": 0, "negative_prompt": ""}},
        "3": _preview_any(["T", 1])}
    loader_only = {"T": LOADER, "2": _preview_any(["T", 0])}
    reward_loader = {**_scored(), "T": reward(), "43": _preview_any(["42", 1])}
    reward_loader["42"] = {**reward_loader["42"], "inputs": {**reward_loader["42"]["inputs"], "reward": ["T", 0]}}
    combine = {**_scored(), "T": {"class_type": "ProGRPORewardCombine", "inputs": {
        "reward_a": ["41", 0], "weight_a": 1.0, "reward_b": ["41", 0], "weight_b": 0.5}}, "43": _preview_any(["42", 1])}
    combine["42"] = {**combine["42"], "inputs": {**combine["42"]["inputs"], "reward": ["T", 0]}}
    score = {**_scored(), "43": _preview_any(["42", 1])}
    score["T"] = score.pop("42")
    score["43"]["inputs"]["source"] = ["T", 1]
    ovf = {**_scored(), "T": {"class_type": "ProGRPOOVFFilter", "inputs": {
        "scores": ["42", 0], "k": 2, "group_size": 4, "images": ["40", 0]}},
        "43": {"class_type": "PreviewImage", "inputs": {"images": ["T", 0]}}}
    plots = {}
    for kind, inputs in (("ProGRPOPruningFunnel", {}), ("ProGRPOClusteringHistogram", {"delta": 0.25})):
        plots[kind] = {**expanded_sampler(), "T": {"class_type": kind, "inputs": {"rollout": ["11", 1], **inputs}},
                       "20": {"class_type": "PreviewImage", "inputs": {"images": ["T", 0]}}}
    sampler_base = {**sampler, "T": sampler["11"]}
    del sampler_base["11"]
    sampler_base["13"] = {"class_type": "PreviewImage", "inputs": {"images": ["T", 2]}}
    return {
        "ProGRPOEmbeddedModelLoader": ("T", loader_only),
        "ProGRPOExpandedSampler": ("T", sampler_base),
        "ProGRPOSampler": ("T", policy),
        "ProGRPOPruneSchedule": ("T", schedule),
        "ProGRPOOVFFilter": ("T", ovf),
        "ProGRPORewardLoader": ("T", reward_loader),
        "ProGRPORewardCombine": ("T", combine),
        "ProGRPORewardScore": ("T", score),
        "ProGRPOPruningFunnel": ("T", plots["ProGRPOPruningFunnel"]),
        "ProGRPOClusteringHistogram": ("T", plots["ProGRPOClusteringHistogram"]),
        "ProGRPOTrainLoop": ("T", loop),
        "ProGRPOTrainStep": ("T", step),
        "ProGRPOSaveLoRA": ("T", save),
        "ProGRPOPromptGrid": ("T", grid),
        "ProGRPOEvaluation": ("T", evaluation),
    }


BASES = _bases()


@pytest.fixture(scope="module")
def widgets(comfy_server) -> dict[str, dict[str, tuple]]:
    """node type -> widget input -> (type, spec) from /object_info."""
    info = comfy_server.get("/object_info")
    found = {}
    for node in BASES:
        specs = {**info[node]["input"].get("required", {}), **info[node]["input"].get("optional", {})}
        found[node] = {name: (spec[0], spec[1] if len(spec) > 1 else {}) for name, spec in specs.items()
                       if spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")}
    return found


def test_every_pro_grpo_node_is_fuzzed(comfy_server):
    info = comfy_server.get("/object_info")
    ours = {name for name, entry in info.items() if entry.get("python_module", "").endswith("comfyui-progrpo")}
    assert ours == set(BASES)


@pytest.mark.parametrize("node", sorted(BASES))
def test_the_valid_base_graph_runs(comfy_server, node):
    """The fuzz bases themselves succeed, so a refused example is refused for the fuzzed value alone."""
    _, prompt = BASES[node]
    status, body = comfy_server.post_prompt(prompt)
    assert status == 200, body
    entry = comfy_server.wait_history(body["prompt_id"], timeout=WAIT)
    assert entry["status"]["status_str"] == "success", (node, execution_error(entry))


# --- values ---------------------------------------------------------------------------------------------------

STRINGS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.sampled_from(["", " ", "\n\n", "x" * 100_000, "../../etc/passwd", "/etc/passwd", "a\x00b", "nan", "-1",
                     "5:24, 7:12", "3:8, 2:4", "1:1", "0:2", "1:3, 1:2", "2:2, 3:3", ":", "1:", "a:b", "9" * 40,
                     "一个手写的数字 7", "🙂" * 500, "a handwritten digit 1\na handwritten digit 2"]),
)
WRONG_TYPES = st.sampled_from([None, [], {}, {"a": 1}, [1, 2, 3], "abc", "", "1e999x"])


def _invalid_number(kind: str, spec: dict) -> st.SearchStrategy:
    lo, hi = spec.get("min"), spec.get("max")
    options = [st.sampled_from([math.nan, "nan", "NaN"]), WRONG_TYPES]
    if kind == "FLOAT":
        options.append(st.sampled_from([math.inf, -math.inf, "inf"]))
    if lo is not None:
        below = st.integers(-(10**12), math.floor(lo) - 1) if kind == "INT" else st.floats(
            max_value=lo, exclude_max=True, allow_nan=False, allow_infinity=False, min_value=-1e300)
        options.append(below)
    if hi is not None:
        above = st.integers(int(hi) + 1, 10**30) if kind == "INT" else st.floats(
            min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False, max_value=1e300)
        options.append(above)
    return st.one_of(*options)


def _value(kind: str, spec: dict) -> st.SearchStrategy:
    """(value, must_be_refused) for a widget of ``kind``."""
    if kind in ("INT", "FLOAT"):
        return _invalid_number(kind, spec).map(lambda v: (v, True))
    if kind == "COMBO":
        options = spec.get("options", [])
        # "" and null are the documented API aliases of "(none)" where that is an option
        return st.one_of(STRINGS, WRONG_TYPES).filter(lambda v: v not in options).map(
            lambda v: (v, not (v in ("", None) and "(none)" in options)))
    if kind == "STRING":
        return STRINGS.map(lambda v: (v, False))
    return st.sampled_from([True, False, 0, 1, "yes"]).map(lambda v: (v, False))  # BOOLEAN: bool() takes anything


# --- the property ---------------------------------------------------------------------------------------------


def _check(server, node: str, name: str, value, must_refuse: bool) -> None:
    node_id, base = BASES[node]
    prompt = {key: {**item, "inputs": dict(item["inputs"])} for key, item in base.items()}
    prompt[node_id]["inputs"][name] = value
    shown = f"{node}.{name}={value!r:.80}"
    status, body = server.post_prompt(prompt)
    # 200 with node errors: the invalid node's outputs were dropped and the valid rest of the graph queued
    if status == 400 or body.get("node_errors"):
        errors = body.get("node_errors", {}).get(node_id, {}).get("errors", [])
        texts = [f"{e.get('extra_info', {}).get('input_name', '')} {e.get('details', '')}" for e in errors]
        assert errors and any(name in text for text in texts), f"{shown}: 400 without naming the input: {body}"
        assert all(e.get("message") for e in errors), f"{shown}: 400 without a message: {body}"
        return
    assert status == 200, f"{shown}: HTTP {status}: {body}"
    try:
        entry = server.wait_history(body["prompt_id"], timeout=WAIT)
    except TimeoutError:
        pytest.fail(f"{shown}: the prompt hung (> {WAIT} s)")
    error = execution_error(entry)
    if error is None:
        assert entry["status"]["status_str"] == "success", (shown, entry["status"])
        assert not must_refuse, f"{shown}: an invalid value ran to success"
        return
    message = error["exception_message"]
    assert error["exception_type"].endswith(ERROR_TYPES), f"{shown}: {error['exception_type']}: {message}"
    if error["node_id"] != node_id and node in CONSUMER:
        node_id, name = CONSUMER[node]
    assert error["node_id"] == node_id, f"{shown}: failed in node {error['node_type']} instead: {message}"
    assert name in message, f"{shown}: the message does not name the input: {message}"


@pytest.mark.parametrize("node", sorted(set(BASES) - {"ProGRPOPruningFunnel"}))  # the funnel has no widget
def test_fuzzed_inputs_are_refused_with_a_message_naming_them(comfy_server, widgets, node):
    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=(Phase.explicit, Phase.generate),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(data=st.data())
    def fuzz(data) -> None:
        name = data.draw(st.sampled_from(sorted(widgets[node])), label="input")
        value, must_refuse = data.draw(_value(*widgets[node][name]), label="value")
        _check(comfy_server, node, name, value, must_refuse)

    fuzz()
    assert alive(comfy_server), "the server died"


def test_the_server_survived_the_fuzzing(comfy_server):
    os.kill(comfy_server.pid, 0)  # the same process, still there
    assert alive(comfy_server)
