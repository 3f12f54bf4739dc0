"""Which sampler steps of each surviving trajectory are trained (``GRPOConfig.timestep_rule``).

Every rule maps the candidate steps (stochastic ones, the flow schedule's last step dropped unless
``train_last_step``) to a ``[S, count]`` LongTensor of trained steps per survivor, ascending:

* ``first`` (Flow-GRPO ``train_sd3.py``, DanceGRPO): the first ``count`` candidates, the same for
  every trajectory; deterministic, the generator is untouched;
* ``random`` (DDPO ``train.py``): each trajectory its own random ``count``-subset (a per-sample
  permutation of the timesteps), drawn from the generator.
"""

from __future__ import annotations

from typing import Callable

import torch

#: ``(candidates [K], count, survivors drawn, generator) -> [survivors drawn, count]`` LongTensor.
TimestepRule = Callable[[torch.Tensor, int, int, torch.Generator], torch.Tensor]


def first_steps(candidates: torch.Tensor, count: int, survivors: int, generator: torch.Generator) -> torch.Tensor:
    """The first ``count`` candidates for every survivor -> [survivors, count]."""
    del generator
    return candidates[:count].expand(survivors, -1).clone()


def random_steps(candidates: torch.Tensor, count: int, survivors: int, generator: torch.Generator) -> torch.Tensor:
    """Each survivor's own random ``count`` of the candidates, ascending -> [survivors, count]."""
    if count == candidates.numel():  # every candidate: no draw (the generator stays untouched)
        return candidates.expand(survivors, -1).clone()
    return torch.stack(
        [candidates[torch.randperm(candidates.numel(), generator=generator)[:count]].sort().values
         for _ in range(survivors)]
    )


#: ``GRPOConfig.timestep_rule`` name -> rule.
TIMESTEP_RULES: dict[str, TimestepRule] = {"first": first_steps, "random": random_steps}


def candidate_steps(stochastic_steps: torch.Tensor, num_steps: int, schedule_kind: str,
                    train_last_step: bool) -> torch.Tensor:
    """Candidate steps [K'] from the rollout's stochastic steps [K] (LongTensor, ascending).

    On a flow schedule the last step (sigma -> 0) is dropped unless ``train_last_step``: its std is
    tiny and its score-function weight the largest, and Flow-GRPO/DanceGRPO never train it. If
    that leaves nothing, the stochastic steps are kept (a one-step SDE window at the end).
    """
    if train_last_step or schedule_kind != "flow":
        return stochastic_steps
    kept = stochastic_steps[stochastic_steps != num_steps - 1]
    return kept if kept.numel() > 0 else stochastic_steps
