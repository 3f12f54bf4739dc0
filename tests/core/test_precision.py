"""Training precision and placement (progrpo.train.precision): fp16 loss scale, compute dtypes, optimiser state.

* ``loss_scale_for`` is the latent's element count for fp16 and 1 otherwise; ``unscale_gradients`` undoes it.
* A network computing in fp16 loses the GRPO gradient to underflow without the scale and keeps it with it
  (hand-built: the per-element gradient of a mean over D elements is 1/D times the sum's).
* Optimiser state restored from a checkpoint follows its parameters when the host moves them (dtype here; a
  device move is the same ``.to``): without ``align_optimizer_state`` AdamW's step fails, with it the step
  runs and the moments sit beside the parameters.
"""

from __future__ import annotations

import pytest
import torch

from progrpo.errors import ProGRPOConfigError, ProGRPOOutOfMemoryError
from progrpo.train.config import GRPOConfig
from progrpo.train.faults import out_of_memory
from progrpo.train.precision import align_optimizer_state, loss_scale_for, resolve_training_dtype, unscale_gradients


def test_loss_scale_is_the_latent_element_count_for_fp16_only():
    assert loss_scale_for(torch.float16, (4, 64, 64)) == 16384.0
    assert loss_scale_for(torch.bfloat16, (4, 64, 64)) == 1.0
    assert loss_scale_for(torch.float32, (16, 128, 128)) == 1.0


def test_auto_training_dtype_is_fp32_on_the_cpu_and_names_are_exact():
    assert resolve_training_dtype("auto", "cpu") == torch.float32
    assert resolve_training_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_training_dtype("fp16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="float16"):
        resolve_training_dtype("float16", "cpu")


def test_loss_scale_config_is_validated():
    with pytest.raises(ProGRPOConfigError, match="loss_scale"):
        GRPOConfig(loss_scale=0.5)
    assert GRPOConfig(loss_scale=4096).loss_scale == 4096.0


def test_unscale_divides_float32_gradients_in_place():
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.tensor([2.0, 4.0, 8.0])
    unscale_gradients([param], 2.0)
    assert param.grad.tolist() == [1.0, 2.0, 4.0]


def _fp16_mean_logprob_gradient(scale: float, elements: int = 16384) -> torch.Tensor:
    """Gradient of a float32 LoRA weight through an fp16 layer under a per-element-mean loss, unscaled.

    The layer output's gradient is 1e-4/D (~6e-9, below fp16's smallest subnormal) per element times ``scale`` (the mean over D latent elements, as the
    GRPO log-prob is), flowing back through an fp16 matmul into the float32 LoRA weight.
    """
    torch.manual_seed(0)
    lora = torch.nn.Parameter(torch.full((8, 8), 0.01))
    inputs = torch.randn(elements // 8, 8).half()
    weight = lora.half()  # cast as ComfyUI's LoraDiff is cast to the compute dtype
    output = inputs @ weight  # fp16 compute
    loss = output.float().mul(1e-4).mean() * scale  # an advantage-weighted mean over D elements
    loss.backward()
    unscale_gradients([lora], scale)
    return lora.grad.clone()


def test_fp16_compute_underflows_without_the_loss_scale_and_not_with_it():
    unscaled = _fp16_mean_logprob_gradient(1.0)
    reference = torch.full((8, 8), 0.0)
    torch.manual_seed(0)
    inputs = torch.randn(16384 // 8, 8)
    reference += (inputs.half().float().sum(0) * 1e-4 / 16384).unsqueeze(1)  # d mean(x @ W) / dW[i, j] = sum_k x[k, i] / (D)
    scaled = _fp16_mean_logprob_gradient(loss_scale_for(torch.float16, (16384,)))
    relative_unscaled = float((unscaled - reference).norm() / reference.norm())
    relative_scaled = float((scaled - reference).norm() / reference.norm())
    assert relative_unscaled > 0.5, "the unscaled fp16 gradient should have lost most of its magnitude"
    assert relative_scaled < 2e-2


def _adamw_restored_from_a_checkpoint() -> tuple[list[torch.nn.Parameter], torch.optim.AdamW]:
    original = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    optimizer = torch.optim.AdamW(original, lr=1e-2)
    for param in original:
        param.grad = torch.ones_like(param)
    optimizer.step()
    state = optimizer.state_dict()
    params = [torch.nn.Parameter(p.detach().clone()) for p in original]
    restored = torch.optim.AdamW(params, lr=1e-2)
    restored.load_state_dict(state)  # the state is created beside the parameters as they are now
    return params, restored


def _host_moves(params: list[torch.nn.Parameter]) -> None:
    """What a host does to the LoRA after the state was restored (here: float64; on a GPU machine: cuda)."""
    for param in params:
        param.data = param.data.to(torch.float64)
        param.grad = torch.ones_like(param)


def test_without_alignment_the_restored_optimizer_cannot_step():
    params, optimizer = _adamw_restored_from_a_checkpoint()
    _host_moves(params)
    with pytest.raises(RuntimeError):
        optimizer.step()


def test_optimizer_state_follows_its_parameters_after_a_resume():
    params, optimizer = _adamw_restored_from_a_checkpoint()
    _host_moves(params)
    moved = align_optimizer_state(optimizer)
    assert moved == 4  # exp_avg and exp_avg_sq of both parameters; the CPU step counters stay
    before = [p.detach().clone() for p in params]
    optimizer.step()
    for param, old in zip(params, before):
        state = optimizer.state[param]
        assert state["exp_avg"].dtype == param.dtype and state["exp_avg"].device == param.device
        assert not torch.equal(param.detach(), old)
    assert align_optimizer_state(optimizer) == 0


def test_out_of_memory_error_names_the_knobs_and_the_checkpoint(tmp_path):
    error = out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 3,
                          tmp_path / "iter_3", {"micro_batch_rows": 4, "width": 1024, "height": 1024})
    assert isinstance(error, ProGRPOOutOfMemoryError) and isinstance(error, torch.OutOfMemoryError)
    message = str(error)
    for knob in ("micro_batch_rows", "gradient_checkpointing", "width", "height", "max_batch_rows", "iter_3",
                 "micro_batch_rows=4"):
        assert knob in message
