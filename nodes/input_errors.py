"""Config errors relabelled for the node input they are about ("steps: num_steps=0 must be >= 1.").

progrpo's errors name its config fields (``ProGRPOConfigError.field``, e.g. ``"rollout.num_steps"``);
a ComfyUI user sees node inputs. :data:`CONFIG_FIELD_INPUTS` is the one map between the two and
:func:`relabeled` the one place a node turns the one into the other.
"""

from __future__ import annotations

from functools import cache

from progrpo.errors import ProGRPOConfigError

#: dotted config field -> node input name, where the input is not named as the field's last part.
CONFIG_FIELD_INPUTS: dict[str, str] = {
    "rollout.group_size": "group_size",
    "rollout.num_steps": "steps",
    "rollout.noise_level": "noise_level",
    "rollout.dynamics": "dynamics",
    "rollout.guidance_scale": "cfg",
    "rollout.prune_schedule": "prune_schedule",
    "rollout.selection": "selection",
    "rollout.height": "height",
    "rollout.width": "width",
    "optim.lr": "lr",
    "lora.rank": "rank",
    "lora.alpha": "alpha",
    "iterations": "iterations",
}


@cache
def node_inputs(node: type) -> frozenset[str]:
    """The input names of ``node``'s schema."""
    return frozenset(item.id for item in node.define_schema().inputs)


def input_for(error: ProGRPOConfigError, inputs: frozenset[str]) -> str | None:
    """The input among ``inputs`` that ``error`` is about, or None.

    From ``error.field``: mapped, else its last part when an input has that name. An error without a field
    (none of the core's config validations raises one) is about no single input.
    """
    if error.field is None:
        return None
    name = CONFIG_FIELD_INPUTS.get(error.field, error.field.rsplit(".", 1)[-1])
    return name if name in inputs else None


def relabeled(error: ProGRPOConfigError, *, node: type | None = None,
              input_name: str | None = None) -> ProGRPOConfigError:
    """``error`` with its message prefixed by the input it is about: ``input_name`` when the caller knows it
    (the socket whose value failed), else the one of ``node``'s inputs :func:`input_for` finds.

    Raise the result ``from None``: the prefixed message says it all. The field is kept.
    """
    name = input_name or (None if node is None else input_for(error, node_inputs(node)))
    message = str(error)
    if name is not None and not message.startswith(f"{name}: "):
        message = f"{name}: {message}"
    return ProGRPOConfigError(message, field=error.field)
