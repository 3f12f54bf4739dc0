"""The Train Loop's live view: progress per model call, a preview image and a status line per iteration (issue 16).

A real run takes minutes per iteration, so the node shows what it is doing while it runs:

* the **progress bar** ticks on every model evaluation (a sampling step's chunk of trajectories, or a
  training micro-batch): an iteration spans as many ticks as the previous one took (the first one is
  estimated from the step count);
* after each iteration, the node's **preview image** shows the survivors with their rewards, the group
  funnel of the rollout (e.g. 16 -> 8 -> 4 per prompt) and the reward curve so far;
* the **text** under the node (``PromptServer.send_progress_text``) gives the iteration, the survivors'
  reward mean and within-group std, how many groups tied (a zero-advantage group teaches nothing), KL, clip
  fraction, seconds per iteration and the ETA;
* the same numbers go out on ``/ws`` as a ``progrpo.progress`` JSON message for headless clients.
"""

from __future__ import annotations

import time
from typing import Any

import comfy.utils
import torch
from PIL import Image, ImageDraw

from progrpo.images import titled_grid

PREVIEW_SIZE = 512  # the longest side ComfyUI scales the preview image to
MIN_WIDTH = 384  # room for the title, the captions and the curve's labels
EVENT = "progrpo.progress"


def status_line(record: dict[str, Any], total: int, seconds_per_iteration: float) -> str:
    """The node's text after an iteration: progress, survivors' reward, tied groups, KL, clip, speed, ETA."""
    done = int(record["iteration"]) + 1
    if record.get("skipped"):
        return f"iteration {done}/{total}: skipped ({record.get('reason', 'non-finite values')})"
    remaining = max(0, total - done) * seconds_per_iteration
    held_out = f"held-out {record['eval_reward']:.4f} | " if isinstance(record.get("eval_reward"), float) else ""
    return (
        f"iteration {done}/{total} | reward {record['reward_mean']:.4f} (group std {record['reward_group_std']:.4f}) | "
        f"{record.get('zero_variance_groups', 0)}/{record.get('prompts', 1)} groups tied | {held_out}"
        f"KL {record.get('approx_kl', 0.0):.3g} | clip {record.get('clip_fraction', 0.0):.3f} | "
        f"{seconds_per_iteration:.1f} s/it | ETA {_duration(remaining)}"
    )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def reward_sparkline(rewards: list[float], width: int, height: int = 90) -> Image.Image:
    """The survivors' mean reward per iteration as a small line plot (PIL: no matplotlib per iteration)."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 4), f"reward (survivors' mean), {len(rewards)} iterations", fill="black")
    if len(rewards) >= 2:
        low, high = min(rewards), max(rewards)
        span = (high - low) or 1.0
        points = [(8 + i * (width - 16) / (len(rewards) - 1), height - 8 - (r - low) / span * (height - 30))
                  for i, r in enumerate(rewards)]
        draw.line(points, fill=(31, 119, 180), width=2)
        draw.text((width - 150, 4), f"{low:.4f} .. {high:.4f}", fill="gray")
    return image


def preview_image(rollout: Any, records: list[dict[str, Any]]) -> Image.Image | None:
    """Survivors with their rewards, the group funnel, and the reward curve so far; None without images."""
    images = getattr(rollout, "images", None)
    if images is None:
        return None
    rewards = rollout.final_rewards.float().cpu()
    order = torch.argsort(rollout.prompt_index.cpu() * 1e6 - rewards)  # by prompt, best first
    schedule = rollout.config.prune_schedule
    sizes = [rollout.config.group_size, *(keep for _, keep in (schedule.checkpoints if schedule else ()))]
    funnel = " -> ".join(str(size) for size in sizes)
    title = f"iteration {int(records[-1]['iteration']) + 1}: survivors, per prompt {funnel}"
    per_prompt = max(1, images.shape[0] // max(1, int(rollout.prompt_index.max()) + 1))
    grid = titled_grid(images[order].float().cpu(), title, [f"{float(r):.3f}" for r in rewards[order]],
                       columns=per_prompt, min_cell=max(96, MIN_WIDTH // per_prompt))
    width = max(grid.width, MIN_WIDTH)
    curve = reward_sparkline([r["reward_mean"] for r in records if not r.get("skipped")], width)
    out = Image.new("RGB", (width, grid.height + curve.height), "white")
    out.paste(grid, (0, 0))
    out.paste(curve, (0, grid.height))
    return out


def prompt_server() -> Any | None:
    """ComfyUI's running PromptServer (None when the nodes run outside a server, e.g. in-process tests)."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


class LiveView:
    """Progress, preview and text of one Train Loop node (module doc)."""

    def __init__(self, iterations: int, steps: int, node_id: str | None, server: Any | None = None) -> None:
        self.iterations = int(iterations)
        self.node_id = node_id
        self.server = server
        self.bar = comfy.utils.ProgressBar(self.iterations, node_id=node_id)
        self.per_iteration = max(2, 2 * int(steps))  # model calls of one iteration; measured after the first
        self.calls = 0
        self.done = 0
        self.started = time.perf_counter()
        self._first_done: int | None = None

    def model_call(self) -> None:
        """One model evaluation finished: tick the bar within the current iteration."""
        self.calls += 1
        per = max(self.per_iteration, self.calls + 1) if self._first_done is None else self.per_iteration
        self.bar.update_absolute(self.done * per + min(self.calls, per - 1), self.iterations * per)

    def iteration_done(self, done: int, rollout: Any, records: list[dict[str, Any]]) -> str:
        """Iteration ``done`` (1-based count) finished: bar, preview, text and /ws message. Returns the text."""
        if self._first_done is None:
            self._first_done, self.per_iteration = done, max(self.calls, 1)
        self.done, self.calls = done, 0
        timed = [r["wall_time"] for r in records if isinstance(r.get("wall_time"), (int, float))][-10:]
        per_iteration = sum(timed) / len(timed) if timed else time.perf_counter() - self.started
        text = status_line(records[-1], self.iterations, per_iteration) if records else f"iteration {done}"
        preview = preview_image(rollout, records) if records and not records[-1].get("skipped") else None
        total = self.iterations * self.per_iteration
        self.bar.update_absolute(done * self.per_iteration, total,
                                 None if preview is None else ("PNG", preview, PREVIEW_SIZE))
        self._send(text, records[-1] if records else {}, done, per_iteration)
        return text

    def _send(self, text: str, record: dict[str, Any], done: int, per_iteration: float) -> None:
        if self.server is None or self.node_id is None:
            return
        self.server.send_progress_text(text, self.node_id)
        keys = ("reward_mean", "reward_group_std", "zero_variance_groups", "prompts", "eval_reward", "approx_kl", "kl",
                "clip_fraction", "grad_norm", "survivors")
        data = {"node": self.node_id, "prompt_id": getattr(self.server, "last_prompt_id", None), "iteration": done, "iterations": self.iterations, "text": text,
                "seconds_per_iteration": per_iteration,
                "eta_seconds": max(0, self.iterations - done) * per_iteration,
                **{key: record[key] for key in keys if key in record}}
        self.server.send_sync(EVENT, data, self.server.client_id)
