"""The main job: Pro-GRPO on the embedded digits model, driven through a headless ComfyUI over HTTP.

    .venv/bin/python scripts/comfy_demo.py [--iterations N] [--output DIR] [--keep-server] [--port P]

(``bash scripts/main_job.sh`` sets up .venv and ComfyUI first, then runs this.)

1. starts ComfyUI headless on 127.0.0.1 with this extension (``scripts/start_comfyui.sh``), or
   uses the one already answering on the port if it has the extension;
2. queues ``workflows/embedded_digits_demo.api.json`` (POST /prompt): the embedded model loader,
   the digit-alignment reward, a prune schedule, the Train Loop, Save LoRA, and a Prompt Grid of
   every prompt before and after training on the same noise;
3. prints the Train Loop's progress from its ``progrpo.progress`` /ws messages (iteration, the survivors'
   mean reward, the ETA);
4. collects the results into ``--output``: the LoRA, ``reward_curve.png``, ``grids/`` (per prompt,
   before | after), ``metrics.jsonl``, ``evaluation.json``, the held-out evaluation (``held_out_table.png``,
   ``held_out.json``: other phrasings of the prompts, scored by two rewards) and the queued ``workflow.api.json``;
5. stops the server it started, unless ``--keep-server`` (then open http://127.0.0.1:PORT).

Needs ComfyUI's requirements (aiohttp) in the interpreter running it, as .venv has.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflows" / "embedded_digits_demo.api.json"
TRAIN_NODE, LORA_NODE, CURVE_NODE, BEFORE_NODE, AFTER_NODE = "4", "5", "6", "7", "8"
BEFORE_IMAGES, AFTER_IMAGES = "9", "10"
EVALUATION_TABLE, EVALUATION_JSON = "13", "14"  # held-out prompts before/after (ProGRPOEvaluation)


def say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


class DemoError(RuntimeError):
    """A failure the demo explains (printed without a traceback)."""


# --- the server -----------------------------------------------------------------------------

def has_extension(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/object_info/ProGRPOTrainLoop", timeout=3) as response:
            return "ProGRPOTrainLoop" in json.load(response)
    except Exception:  # noqa: BLE001 - nothing (or something else) listens there
        return False


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def start_server(port: int, base: Path) -> int:
    """Start ComfyUI through scripts/start_comfyui.sh; returns its pid."""
    if not port_is_free(port):
        raise DemoError(
            f"port {port} is taken by something that is not ComfyUI with comfyui-progrpo; pass --port with a "
            "free port."
        )
    say(f"starting ComfyUI on http://127.0.0.1:{port} (base directory {base}) ...")
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "start_comfyui.sh"), "--port", str(port), "--base-directory", str(base)],
        check=False, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise DemoError(f"ComfyUI did not start:\n{result.stdout}{result.stderr}")
    say(result.stdout.strip())
    return int((base / f"comfyui-{port}.pid").read_text().strip())


def stop_server(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` s for it to exit, then SIGKILL (the test harness uses it too)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


# --- queue and follow -----------------------------------------------------------------------

def build_prompt(iterations: int | None, resume: bool, seed: int | None) -> dict[str, Any]:
    prompt = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    train = prompt[TRAIN_NODE]["inputs"]
    if iterations is not None:
        train["iterations"] = int(iterations)
    if seed is not None:
        train["seed"] = int(seed)
    train["resume"] = bool(resume)
    return prompt


def output_file(url: str, subfolder: str, filename: str) -> bytes:
    """A file of the server's output folder, through GET /view (works for any local or remote server)."""
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": "output"})
    with urllib.request.urlopen(f"{url}/view?{query}", timeout=30) as response:
        return response.read()


async def run_prompt(url: str, prompt: dict[str, Any]) -> dict[str, Any]:
    """Queue ``prompt`` and print progress until it finishes; returns its /history entry."""
    import aiohttp

    client_id = uuid.uuid4().hex
    titles = {node_id: node.get("_meta", {}).get("title", node["class_type"]) for node_id, node in prompt.items()}
    started = time.monotonic()
    tty = sys.stdout.isatty()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?clientId={client_id}") as socket:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as response:
                body = await response.json()
                if response.status != 200:
                    raise DemoError(f"ComfyUI refused the workflow: {json.dumps(body, indent=1)}")
            prompt_id = body["prompt_id"]
            say(f"queued {WORKFLOW.name} as prompt {prompt_id}")
            last_printed = -1
            async for message in socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                kind, data = event.get("type"), event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if kind == "executing" and data.get("node") is not None:
                    say(f"  running: {titles.get(str(data['node']), data['node'])}")
                elif kind == "progrpo.progress" and str(data.get("node")) == TRAIN_NODE:
                    # the Train Loop's per-iteration message (its live view): iteration, reward, ETA
                    done, total = int(data["iteration"]), int(data["iterations"])
                    line = (f"  iteration {done:>4}/{total}  reward {data.get('reward_mean', float('nan')):.3f}"
                            f"  ({time.monotonic() - started:.0f} s, ETA {data.get('eta_seconds', 0):.0f} s)")
                    if tty:
                        sys.stdout.write("\r" + line + ("\n" if done == total else ""))
                        sys.stdout.flush()
                    elif done == total or done // 10 != last_printed // 10:
                        say(line)
                    last_printed = done
                elif kind == "execution_error":
                    raise DemoError(
                        f"node {data.get('node_id')} ({data.get('node_type')}) failed: {data.get('exception_message')}"
                    )
                elif kind == "execution_interrupted":
                    raise DemoError("the run was interrupted; run the demo again with --resume to continue it")
                elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                    break
        # ComfyUI sends execution_success before it files the prompt in /history: poll briefly.
        entry = None
        for _ in range(100):
            async with session.get(f"{url}/history/{prompt_id}") as response:
                entry = (await response.json()).get(prompt_id)
            if entry:
                break
            await asyncio.sleep(0.1)
    if not entry or entry["status"].get("status_str") != "success":
        raise DemoError(f"the workflow did not complete: {json.dumps(entry and entry['status'])}")
    return entry


# --- collect ---------------------------------------------------------------------------------

def fetch_image(url: str, image: dict[str, str]) -> bytes:
    return output_file(url, image["subfolder"], image["filename"])


def side_by_side(before: bytes, after: bytes) -> Any:
    import io

    from PIL import Image, ImageDraw

    left, right = Image.open(io.BytesIO(before)).convert("RGB"), Image.open(io.BytesIO(after)).convert("RGB")
    label = 14
    out = Image.new("RGB", (left.width + right.width + 8, max(left.height, right.height) + label), "white")
    draw = ImageDraw.Draw(out)
    draw.text((2, 1), "before training", fill="black")
    draw.text((left.width + 10, 1), "after training", fill="black")
    out.paste(left, (0, label))
    out.paste(right, (left.width + 8, label))
    return out


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:60] or "prompt"


def collect(url: str, entry: dict[str, Any], prompt: dict[str, Any], output: Path, run_folder: str) -> dict[str, Any]:
    outputs = entry["outputs"]
    output.mkdir(parents=True, exist_ok=True)
    (output / "grids").mkdir(exist_ok=True)
    (output / "workflow.api.json").write_text(json.dumps(prompt, indent=1), encoding="utf-8")
    lora_name = outputs[LORA_NODE]["text"][0]  # the copy Save LoRA put into models/loras
    (output / lora_name).write_bytes(output_file(url, run_folder, "lora.safetensors"))
    (output / "metrics.jsonl").write_bytes(output_file(url, run_folder, "metrics.jsonl"))
    (output / "reward_curve.png").write_bytes(fetch_image(url, outputs[CURVE_NODE]["images"][0]))
    before, after = (json.loads(outputs[node]["text"][0]) for node in (BEFORE_NODE, AFTER_NODE))
    pairs = zip(outputs[BEFORE_IMAGES]["images"], outputs[AFTER_IMAGES]["images"], strict=True)
    for index, (image_before, image_after) in enumerate(pairs):
        grid = side_by_side(fetch_image(url, image_before), fetch_image(url, image_after))
        grid.save(output / "grids" / f"{index:02d}_{slug(before['prompts'][index])}.png")
    per_prompt = {
        prompt_text: {"before": mean_before, "after": mean_after}
        for prompt_text, mean_before, mean_after in zip(before["prompts"], before["mean"], after["mean"], strict=True)
    }
    evaluation = {
        "reward": "digit_alignment (classifier probability of the prompted digit)",
        "samples_per_prompt": len(before["rewards"][0]),
        "seed": before["seed"],
        "mean_before": sum(before["mean"]) / len(before["mean"]),
        "mean_after": sum(after["mean"]) / len(after["mean"]),
        "per_prompt": per_prompt,
        "iterations": prompt[TRAIN_NODE]["inputs"]["iterations"],
        "lora": lora_name,
    }
    (output / "evaluation.json").write_text(json.dumps(evaluation, indent=1), encoding="utf-8")
    (output / "held_out_table.png").write_bytes(fetch_image(url, outputs[EVALUATION_TABLE]["images"][0]))
    (output / "held_out.json").write_text(outputs[EVALUATION_JSON]["text"][0], encoding="utf-8")
    return evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations (default: the workflow's, 100)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the workflow's, 0)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "comfyui_demo",
                        help="where the results go (default runs/comfyui_demo)")
    parser.add_argument("--port", type=int, default=8188, help="ComfyUI port (default 8188)")
    parser.add_argument("--base-directory", type=Path, default=REPO / ".comfyui" / "base",
                        help="ComfyUI's base directory: models/, input/, output/ (default .comfyui/base)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the previous demo run from its checkpoint instead of starting over")
    parser.add_argument("--keep-server", action="store_true",
                        help="leave ComfyUI running afterwards, for the graph editor at http://127.0.0.1:PORT")
    args = parser.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be >= 1")
    url = f"http://127.0.0.1:{args.port}"
    started_pid = None
    base = args.base_directory.resolve()
    try:
        if has_extension(url):
            say(f"using the ComfyUI already running at {url}")
        else:
            started_pid = start_server(args.port, base)
        prompt = build_prompt(args.iterations, args.resume, args.seed)
        run_folder = f"progrpo/{prompt[TRAIN_NODE]['inputs']['run_name']}"
        began = time.monotonic()
        entry = asyncio.run(run_prompt(url, prompt))
        evaluation = collect(url, entry, prompt, args.output.resolve(), run_folder)
        say(f"done in {time.monotonic() - began:.0f} s. Mean reward on the same {evaluation['samples_per_prompt']} "
            f"seeds per prompt: before {evaluation['mean_before']:.3f} -> after {evaluation['mean_after']:.3f}")
        say(f"results in {args.output.resolve()}: {evaluation['lora']}, reward_curve.png, grids/, metrics.jsonl, "
            "evaluation.json, held_out_table.png, held_out.json")
    except DemoError as error:
        say(f"error: {error}")
        return 1
    finally:
        if started_pid is not None and not args.keep_server:
            stop_server(started_pid)
    if started_pid is not None and args.keep_server:
        say(f"ComfyUI keeps running at {url} (pid {started_pid}); open it in a browser and load "
            f"workflows/embedded_digits_demo.json; stop it with: kill {started_pid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
