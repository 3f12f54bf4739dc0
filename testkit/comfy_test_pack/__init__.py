"""A test-only ComfyUI node pack (never shipped; the tests link it into a test server's custom_nodes).

The server imports ``testkit`` from this repo: ``ComfyServer.start`` puts the repo on its PYTHONPATH.

It makes a CPU server behave, where it matters for training, like a GPU one, and injects faults:

* ``PROGRPO_TEST_FP8_COMPUTE=1`` in the server's environment makes ComfyUI believe the device
  computes in fp8, so ``UNETLoader`` with ``weight_dtype fp8_e4m3fn_fast`` builds its layers from
  ``comfy.ops.fp8_ops`` (the ``torch._scaled_mm`` fast path ComfyUI only picks on fp8 GPUs;
  ``_scaled_mm`` runs on the CPU too, without a backward);
* ``ProGRPOTestOutOfMemory`` returns a MODEL whose diffusion model raises ``torch.OutOfMemoryError``
  in the first forward that autograd records (the training update, never the sampling);
* ``ProGRPOTestModelReport`` returns, as JSON, the MODEL's Linear layer classes and dtypes;
* narrow test files of families whose width ComfyUI's detection hard-codes load through
  ``tiny_families.install_detection_shim`` (files without its metadata load unchanged);
* ``ProGRPOTestFamilyCheckpoint`` stands in for Load Checkpoint (MODEL, CLIP-like encoder, VAE of a family);
* ``ProGRPOTestFamilyConditioning`` / ``ProGRPOTestFamilyClip`` give a family's CONDITIONING / a CLIP-like
  encoder of it for the tiny family models (``testkit/tiny_families.py``: their text encoders are
  gigabytes); ``ProGRPOTestGuidanceProbe`` returns a MODEL that records the guidance values its
  diffusion model receives, and ``ProGRPOTestGuidanceReport`` reports them.
"""

from __future__ import annotations

import json
import os

import comfy.model_management
import comfy.patcher_extension
import comfy.sd
import torch
from comfy_api.latest import ComfyExtension, io

from testkit.tiny_families import FamilyClip, all_families, install_detection_shim

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


install_detection_shim()  # narrow files of width-pinned families (tiny_families module doc)


def _family(name: str):
    return all_families()[name]


class ProGRPOTestFamilyConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProGRPOTestFamilyConditioning", category="testing",
                         inputs=[io.String.Input("family"), io.String.Input("text")],
                         outputs=[io.Conditioning.Output()])

    @classmethod
    def execute(cls, family, text) -> io.NodeOutput:
        return io.NodeOutput(_family(family).conditioning(text))


class ProGRPOTestFamilyClip(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProGRPOTestFamilyClip", category="testing",
                         inputs=[io.String.Input("family")], outputs=[io.Clip.Output()])

    @classmethod
    def execute(cls, family) -> io.NodeOutput:
        return io.NodeOutput(FamilyClip(_family(family)))


class ProGRPOTestFamilyCheckpoint(io.ComfyNode):
    """Load Checkpoint's outputs for a tiny family: its diffusion model (UNETLoader's route), encoder and VAE."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProGRPOTestFamilyCheckpoint", category="testing",
                         inputs=[io.String.Input("family")],
                         outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()])

    @classmethod
    def execute(cls, family) -> io.NodeOutput:
        import folder_paths

        import nodes

        tiny = _family(family)
        model = comfy.sd.load_diffusion_model(folder_paths.get_full_path_or_raise("diffusion_models", tiny.unet_file))
        return io.NodeOutput(model, FamilyClip(tiny), nodes.VAELoader().load_vae(tiny.vae_name)[0])


#: guidance values the probed diffusion models received, per probe name (this server process)
GUIDANCE_SEEN: dict[str, list[float]] = {}


class ProGRPOTestGuidanceProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProGRPOTestGuidanceProbe", category="testing",
                         inputs=[io.Model.Input("model"), io.String.Input("probe")], outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, probe) -> io.NodeOutput:
        seen = GUIDANCE_SEEN.setdefault(probe, [])

        def record(executor, *args, **kwargs):
            # Flux.forward(x, timestep, context, y, guidance, ...): the guidance embedding's input
            guidance = kwargs.get("guidance", args[4] if len(args) > 4 else None)
            if guidance is not None:
                seen.extend(float(g) for g in guidance.flatten())
            return executor(*args, **kwargs)

        clone = model.clone()
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "progrpo_test_guidance", record)
        return io.NodeOutput(clone)


class ProGRPOTestGuidanceReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="ProGRPOTestGuidanceReport", category="testing", is_output_node=True,
                         inputs=[io.String.Input("probe"), io.String.Input("after")], outputs=[io.String.Output()])

    @classmethod
    def execute(cls, probe, after) -> io.NodeOutput:
        report = json.dumps(sorted(set(GUIDANCE_SEEN.get(probe, []))))
        return io.NodeOutput(report, ui={"text": [report]})


class _Pack(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ProGRPOTestOutOfMemory, ProGRPOTestModelReport, ProGRPOTestFamilyConditioning, ProGRPOTestFamilyClip,
                ProGRPOTestFamilyCheckpoint, ProGRPOTestGuidanceProbe, ProGRPOTestGuidanceReport]


async def comfy_entrypoint() -> ComfyExtension:
    return _Pack()
