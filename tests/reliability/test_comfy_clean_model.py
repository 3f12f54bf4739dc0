"""The model ComfyUI cached stays clean: after a training node finishes, fails (a reward error mid-run, a bad
LoRA that does not fit, caught after the adapter was attached) or is interrupted, the stock KSampler on the *same cached* MODEL
gives bit-identical latents and pixels to before training.

Every case re-samples with the stock KSampler and asserts from /history that the loader came from the cache
(the same MODEL object the training node got) while the KSampler really ran again; outputs are read back
through GET /view and compared byte for byte. A control in the first case shows the comparison can fail: the
trained MODEL's samples differ.
"""

from __future__ import annotations

import pytest

from testkit.comfy_graphs import (
    cached_nodes,
    execution_error,
    expanded_sampler,
    latent_bytes,
    pixels,
    post,
    run,
    sampling,
    train_loop,
    view,
    wait_for,
)
from testkit.comfy_harness import requires_comfyui

pytestmark = [pytest.mark.slow, requires_comfyui]


def _outputs(server, entry) -> tuple[bytes, bytes]:
    assert entry["status"]["status_str"] == "success", entry["status"]
    latent = latent_bytes(view(server, entry["outputs"]["33"]["latents"][0]))
    image = pixels(view(server, entry["outputs"]["35"]["images"][0]))
    return latent, image


def _resample(server, tag: str) -> tuple[bytes, bytes]:
    entry = run(server, sampling(f"clean/{tag}"))
    cached = cached_nodes(entry)
    assert "1" in cached, "the loader must come from the cache: the very MODEL the training node got"
    assert "32" not in cached, "the KSampler must sample again, not return a cached latent"
    return _outputs(server, entry)


@pytest.fixture(scope="module")
def baseline(comfy_server):
    entry = run(comfy_server, sampling("clean/base"))
    return _outputs(comfy_server, entry)


def test_after_a_finished_train_loop_the_cached_model_samples_bit_identically(comfy_server, baseline):
    prompt = train_loop("clean_finished", iterations=1)
    # control: the trained MODEL (the loop's output) through the same KSampler must differ
    trained = sampling("clean/trained")
    prompt.update({key: value for key, value in trained.items() if key not in ("1",)})
    prompt["32"] = {**prompt["32"], "inputs": {**prompt["32"]["inputs"], "model": ["3", 0]}}
    entry = run(comfy_server, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    trained_latent = latent_bytes(view(comfy_server, entry["outputs"]["33"]["latents"][0]))
    assert trained_latent != baseline[0], "the LoRA changed nothing: the bit-identity checks would be vacuous"
    assert _resample(comfy_server, "after_finished") == baseline


def test_after_a_reward_error_mid_run_the_cached_model_samples_bit_identically(comfy_server, baseline):
    # digit_alignment fails when it scores the first group: the prompt names no digit (after sampling with the LoRA)
    entry = run(comfy_server, train_loop("clean_reward_error", reward_name="digit_alignment",
                                         prompts="a handwritten letter"))
    error = execution_error(entry)
    assert error is not None and error["node_id"] == "3", entry["status"]
    assert "digit_alignment" in error["exception_message"] and "names no digit" in error["exception_message"]
    assert _resample(comfy_server, "after_reward_error") == baseline


def test_after_an_interrupted_train_loop_the_cached_model_samples_bit_identically(comfy_server, baseline):
    run_dir = comfy_server.base / "output" / "progrpo" / "clean_interrupted"
    status, body = comfy_server.post_prompt(train_loop("clean_interrupted", iterations=500))
    assert status == 200, body
    metrics = run_dir / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1, 120, "a first training iteration")
    post(comfy_server, "/interrupt", {"prompt_id": body["prompt_id"]})
    entry = comfy_server.wait_history(body["prompt_id"], timeout=60)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, entry["status"]
    assert metrics.read_text().count("\n") < 500
    assert _resample(comfy_server, "after_interrupt") == baseline


def test_after_train_steps_one_failing_the_cached_model_samples_bit_identically(comfy_server, baseline):
    prompt = expanded_sampler(seed=3)
    prompt.update({
        "20": {"class_type": "ProGRPOTrainStep", "inputs": {"model": ["1", 0], "rollout": ["11", 1], "lr": 0.05,
                                                            "rank": 2, "alpha": 2.0, "seed": 0}},
        "21": {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["20", 1], "name": "clean_step"}},
        # a second step continuing from the first with another rank fails after building its adapter
        "22": {"class_type": "ProGRPOTrainStep", "inputs": {"model": ["1", 0], "rollout": ["11", 1], "lr": 0.05,
                                                            "rank": 4, "alpha": 4.0, "seed": 0, "lora": ["20", 1]}},
        "23": {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["22", 1], "name": "clean_step_bad"}},
    })
    entry = run(comfy_server, prompt)
    error = execution_error(entry)
    assert error is not None and error["node_id"] == "22", entry["status"]
    assert error["exception_message"].startswith("lora:"), error["exception_message"]
    assert (comfy_server.models / "loras" / "clean_step.safetensors").is_file()  # the first step did run
    assert _resample(comfy_server, "after_train_steps") == baseline
