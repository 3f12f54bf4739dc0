"""Load burst: 30 API prompts queued at once on one server, twice.

Each round mixes stock sampling, an inspection graph (Expanded Sampler with a prune schedule, pruning funnel,
previews), short training runs (Train Loop, 2 iterations) and invalid prompts (wrong types, out of range,
NaN, a link to a missing node, an unknown node type, a path escape). Every valid prompt must finish with
status success in /history, every invalid one must be refused with node errors (HTTP 400), the server must
stay up, and its resident memory (VmRSS) after the second round must be within 10% of its level after the
first. The second round has the same graphs with other seeds and run names, so it really executes (an
identical prompt would come from ComfyUI's cache) rather than measuring a no-op.
"""

from __future__ import annotations

import copy
import time

import pytest

from testkit.comfy_graphs import LOADER, alive, expanded_sampler, rss_kib, sampling, train_loop
from testkit.comfy_harness import requires_comfyui

pytestmark = [pytest.mark.slow, requires_comfyui]

ROUND_TIMEOUT = 120.0


def _inspection(seed: int) -> dict:
    prompt = expanded_sampler(seed=seed, group_size=4, steps=3)
    prompt["15"] = {"class_type": "ProGRPOPruneSchedule", "inputs": {"checkpoints": "1:3, 2:2"}}
    prompt["11"]["inputs"]["prune_schedule"] = ["15", 0]
    prompt["16"] = {"class_type": "ProGRPOPruningFunnel", "inputs": {"rollout": ["11", 1]}}
    prompt["17"] = {"class_type": "PreviewImage", "inputs": {"images": ["16", 0]}}
    return prompt


def _invalid(tag: int) -> list[tuple[str, dict]]:
    """(what is wrong, prompt) for each invalid kind."""
    cases = []

    def broken(what: str, graph: dict, node: str, **inputs) -> None:
        graph = copy.deepcopy(graph)
        graph[node]["inputs"].update(inputs)
        cases.append((what, graph))

    broken("a string for an INT", sampling(f"burst/bad{tag}"), "32", steps="many")
    broken("steps below min", sampling(f"burst/bad{tag}"), "32", steps=0)
    broken("group_size above max", _inspection(tag), "11", group_size=100_000)
    broken("NaN cfg", _inspection(tag), "11", cfg=float("nan"))
    broken("a link to a missing node", sampling(f"burst/bad{tag}"), "32", model=["999", 0])
    broken("a run_name escaping the output folder", train_loop(f"burst_bad{tag}"), "3", run_name="../escape")
    broken("a missing required input", train_loop(f"burst_bad{tag}"), "3")
    del cases[-1][1]["3"]["inputs"]["reward"]
    unknown = sampling(f"burst/bad{tag}")
    unknown["36"] = {"class_type": "ProGRPONoSuchNode", "inputs": {}}
    cases.append(("an unknown node type", unknown))
    return cases


def _round(offset: int) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(valid, invalid) prompts of one round: 22 valid, 8 invalid."""
    valid = [(f"sampling {i}", sampling(f"burst/r{offset}_{i}", seed=offset * 100 + i)) for i in range(10)]
    valid += [(f"inspection {i}", _inspection(offset * 100 + i)) for i in range(6)]
    valid += [(f"training {i}", train_loop(f"burst_r{offset}_{i}", iterations=2, seed=offset * 100 + i))
              for i in range(4)]
    valid += [("embedded loader only", {"1": LOADER, "2": {"class_type": "PreviewAny", "inputs": {
        "source": ["1", 0]}}}), ("stock image only", {"1": {"class_type": "EmptyImage", "inputs": {
            "width": 8, "height": 8, "batch_size": 1, "color": offset}}, "2": {"class_type": "PreviewImage",
                                                                               "inputs": {"images": ["1", 0]}}})]
    return valid, _invalid(offset)


def _burst(server, offset: int) -> float:
    valid, invalid = _round(offset)
    assert len(valid) + len(invalid) == 30
    began = time.monotonic()
    queued = []
    mixed, bad = [], list(invalid)
    for index, (what, prompt) in enumerate(valid):  # an invalid prompt after every third valid one
        mixed.append((what, prompt, True))
        if index % 3 == 2 and bad:
            mixed.append((*bad.pop(0), False))
    mixed += [(what, prompt, False) for what, prompt in bad]
    for what, prompt, ok in mixed:
        status, body = server.post_prompt(prompt)
        if ok:
            assert status == 200 and not body.get("node_errors"), (what, body)
            queued.append((what, body["prompt_id"]))
        else:
            assert status == 400, (what, status, body)
            assert body.get("error", {}).get("message"), (what, body)
            if what != "an unknown node type":  # that one is refused as a whole prompt, before any node
                errors = [e for node in body["node_errors"].values() for e in node["errors"]]
                assert errors and all(e.get("message") for e in errors), (what, body)
    for what, prompt_id in queued:
        remaining = ROUND_TIMEOUT - (time.monotonic() - began)
        entry = server.wait_history(prompt_id, timeout=max(remaining, 1.0))
        assert entry["status"]["status_str"] == "success", (what, entry["status"])
    assert alive(server)
    return time.monotonic() - began


def test_a_burst_of_30_mixed_prompts_twice_completes_and_memory_settles(comfy_server):
    first = _burst(comfy_server, 1)
    time.sleep(1.0)
    after_first = rss_kib(comfy_server.pid)
    second = _burst(comfy_server, 2)
    time.sleep(1.0)
    after_second = rss_kib(comfy_server.pid)
    print(f"burst rounds: {first:.1f} s, {second:.1f} s; VmRSS {after_first / 1024:.0f} -> {after_second / 1024:.0f} MiB")
    assert after_second <= after_first * 1.10, (after_first, after_second)
    assert comfy_server.get("/queue") == {"queue_running": [], "queue_pending": []}
