"""Measures the peak of torch's CPU allocations while trainers/hf/train.py
trains a tiny model for a few steps, for memory's test of its estimate.

Reads a JSON list of runs on stdin, each {"baseModel", "examples" (a
micro-batch's), "sequenceLength", "gradientCheckpointing", "qlora",
"method"}, and prints one JSON line per run: the run, the model's shapes as
train.py builds them, and peakBytes. Each run trains two steps of two
micro-batches: the second step finds the optimizer's state, and each
step's second micro-batch the first one's gradients.

Why torch's allocations and not the process's RSS: RSS counts the Python
interpreter, the imported libraries and whatever the allocator keeps
cached, tens of megabytes that move from run to run, while a tiny model's
training peak is a few megabytes. The profiler's memory events are every
allocation and free that goes through torch's CPU allocator (tensors, and
the scratch buffers kernels take from it), in order, so their running sum is
the bytes of tensors alive at each moment: what a GPU's allocator holds too.
The whole trainer run is profiled, from building the model to the result,
so the weights count as they do on a GPU.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HF = Path(__file__).resolve().parents[2] / "trainers" / "hf"
sys.path.insert(0, str(HF))

from torch._C._profiler import _EventType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import train  # noqa: E402

sys.modules.setdefault("train", train)  # dpo.py imports train: the same module

PROMPT = "Say it."


def reply(length: int, i: int) -> str:
    # The tiny tokenizer has one token a byte: a reply of 2*length bytes is cut at length tokens.
    return "".join(chr(ord("a") + (i + k) % 26) for k in range(2 * length))


def write_data(path: Path, run: dict[str, Any]) -> None:
    n = run["sequenceLength"]
    lines = []
    for i in range(4 * run["examples"]):
        prompt = [{"role": "user", "content": PROMPT}]
        if run["method"] == "dpo":
            lines.append({
                "input": {"messages": prompt},
                "preferred_output": [{"role": "assistant", "content": reply(n, i)}],
                "non_preferred_output": [{"role": "assistant", "content": reply(n, i + 1)}],
            })
        else:
            lines.append({"messages": [*prompt, {"role": "assistant", "content": reply(n, i)}]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def shapes(base_model: str) -> dict[str, int]:
    """The tiny model's shapes, as train.py builds it."""
    fields = train.tiny_fields(base_model, None)
    heads = fields["num_attention_heads"]
    return {
        "layers": fields["num_hidden_layers"],
        "hidden": fields["hidden_size"],
        "intermediate": fields["intermediate_size"],
        "heads": heads,
        "kvHeads": fields.get("num_key_value_heads", heads),
        "headDim": fields.get("head_dim") or fields["hidden_size"] // heads,
        "vocab": len(train.build_tiny_tokenizer(fields)),
    }


def peak(prof: Any) -> int:
    """The most bytes allocated at once while profiling: the running sum of
    the CPU allocator's allocations and frees, in order. A free of memory
    allocated before the profile began (a previous run's garbage, collected
    now) is left out: it was never counted in."""
    events = []

    def walk(event: Any) -> None:
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.ptr))
        for child in event.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    sizes: dict[int, int] = {}
    live = top = 0
    for _, size, ptr in sorted(events):
        if size > 0:
            sizes[ptr] = size
        elif sizes.pop(ptr, None) is None:
            continue
        live += size
        top = max(top, live)
    return top


def measure(run: dict[str, Any], root: Path) -> int:
    root.mkdir()
    data = root / "train.jsonl"
    write_data(data, run)
    for d in ("checkpoints", "output"):
        (root / d).mkdir()
    config = {
        "protocol": 1,
        "jobId": "ftjob_memory",
        "baseModel": run["baseModel"],
        "modelPath": str(root / "no-weights"),
        "trainingFile": str(data),
        "validationFile": None,
        "hyperparameters": {"epochs": 1, "learningRate": 0.001, "batchSize": 2 * run["examples"], "warmupSteps": 0,
                            "qlora": run["qlora"]},
        "method": {"type": run["method"]},
        "maxSequenceLength": run["sequenceLength"],
        "seed": 1,
        "epochs": {"from": 1, "to": 1},
        "resumeFrom": None,
        "checkpointDir": str(root / "checkpoints"),
        "outputDir": str(root / "output"),
    }
    (root / "config.json").write_text(json.dumps(config))
    os.environ["TUNEFORGE_TRAINER_CONFIG"] = str(root / "config.json")
    checkpointing = "--gradient-checkpointing" if run["gradientCheckpointing"] else "--no-gradient-checkpointing"
    flags = ["--init-tiny", "--threads", "1", "--eval-every", "0", "--checkpoint-every", "0", checkpointing,
             "--micro-batch-size", str(run["examples"])]
    out = io.StringIO()
    gc.collect()  # the previous run's objects, before the profile starts
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, contextlib.redirect_stdout(out):
        code = train.main(flags)
    if code != 0:
        raise SystemExit(f"train.py exited {code} for {run}:\n{out.getvalue()[-3000:]}")
    return peak(prof)


def main() -> None:
    runs = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            measured = measure(run, Path(tmp) / str(i))
            print(json.dumps({**run, "shapes": shapes(run["baseModel"]), "peakBytes": measured}), flush=True)


if __name__ == "__main__":
    main()
