"""A test-only ComfyUI node pack (never shipped; the tests link it into a test server's custom_nodes).

It makes a CPU server behave, where it matters for training, like a GPU one, and injects faults:

* ``PROGRPO_TEST_FP8_COMPUTE=1`` in the server's environment makes ComfyUI believe the device
  computes in fp8, so ``UNETLoader`` with ``weight_dtype fp8_e4m3fn_fast`` builds its layers from
  ``comfy.ops.fp8_ops`` (the ``torch._scaled_mm`` fast path ComfyUI only picks on fp8 GPUs;
  ``_scaled_mm`` runs on the CPU too, without a backward);
* ``ProGRPOTestOutOfMemory`` returns a MODEL whose diffusion model raises ``torch.OutOfMemoryError``
  in the first forward that autograd records (the training update, never the sampling);
* ``ProGRPOTestModelReport`` returns, as JSON, the MODEL's Linear layer classes and dtypes.
"""

from __future__ import annotations

import json
import os

import comfy.model_management
import comfy.patcher_extension
import torch
from comfy_api.latest import ComfyExtension, io

if os.environ.get("PROGRPO_TEST_FP8_COMPUTE") == "1":
    comfy.model_management.supports_fp8_compute = lambda device=None: True


def _raise_when_differentiated(executor, *args, **kwargs):
    if torch.is_grad_enabled():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test pack)")
    return executor(*args, **kwargs)


class ProGRPOTestOutOfMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProGRPOTestOutOfMemory", category="testing",
                         inputs=[io.Model.Input("model")], outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        clone = model.clone()
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "progrpo_test_oom",
                                   _raise_when_differentiated)
        return io.NodeOutput(clone)


class ProGRPOTestModelReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProGRPOTestModelReport", category="testing", is_output_node=True,
                         inputs=[io.Model.Input("model")], outputs=[io.String.Output()])

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        linears = [m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear)]
        report = {
            "linear_classes": sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in linears}),
            "weight_dtypes": sorted({str(m.weight.dtype) for m in linears}),
            "manual_cast_dtype": str(model.model.manual_cast_dtype),
        }
        return io.NodeOutput(json.dumps(report), ui={"text": [json.dumps(report)]})


class _Pack(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ProGRPOTestOutOfMemory, ProGRPOTestModelReport]


async def comfy_entrypoint() -> ComfyExtension:
    return _Pack()
