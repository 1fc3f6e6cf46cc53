"""LoRA against QLoRA: trainers/hf/train.py on the same model, data and
steps, once with bf16 base weights and once with 4-bit NF4 ones
(hyperparameters.qlora). Prints the tokens/s and the peak memory of each.

python bench/hf/qlora.py [--model-dir DIR | --tiny-config JSON] [--steps N] [--batch N] [--threads N]

--model-dir is a Hugging Face model directory (a real model's weights). Without
it, train.py trains its tiny llama-3.1-8b stand-in, made as big as
--tiny-config says (default: bench.py's 25M-parameter model). Each run is a
process of its own. Its peak memory is torch's peak allocation on the GPU
(weights, adapter, optimizer state, activations), or on the CPU the process's
peak resident memory, which includes the libraries.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import MODEL, chat  # noqa: E402  (the same model and data as make bench-hf)


def child(config: str, flags: list[str]) -> None:
    """One training run in this process, then its peak memory as a last JSON line."""
    os.environ["TUNEFORGE_TRAINER_CONFIG"] = config
    sys.path.insert(0, str(HERE.parents[1] / "trainers" / "hf"))
    import torch
    import train

    code = train.main(flags)
    if torch.cuda.is_available():
        peak, where = torch.cuda.max_memory_allocated(), torch.cuda.get_device_name()
    else:
        peak, where = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu (peak RSS)"
    print(json.dumps({"type": "peak", "bytes": peak, "device": where}), flush=True)
    sys.exit(code)


def run(root: Path, config: dict, qlora: bool, flags: list[str]) -> dict:
    name = "qlora" if qlora else "lora"
    cfg = dict(config, hyperparameters={**config["hyperparameters"], "qlora": qlora},
               checkpointDir=str(root / name / "checkpoints"), outputDir=str(root / name))
    (root / name / "checkpoints").mkdir(parents=True)
    path = root / name / "config.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run([sys.executable, __file__, "--child", str(path), *flags],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"train.py with qlora={qlora} failed ({out.returncode}): {out.stderr[-2000:]}")
    messages = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    logs = [m["message"] for m in messages if m["type"] == "log"]
    # The epoch's log line: real tokens over the seconds spent in steps.
    done = next(m for m in logs if " tokens/s" in m)
    peak = messages[-1]
    return {
        "name": "QLoRA (4-bit NF4)" if qlora else "LoRA (full-precision base)",
        "tokens": [m for m in messages if m["type"] == "progress"][-1]["tokens"],
        "seconds": float(done.split(" tokens in ")[1].split(" s ")[0]),
        "peak": peak["bytes"],
        "device": peak["device"],
        "loaded": next(m for m in logs if m.startswith("loaded")),
        "weights": next((m for m in logs if m.startswith("QLoRA:")), ""),
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", help="a Hugging Face model directory; default: the tiny stand-in")
    p.add_argument("--tiny-config", help="JSON model fields for the tiny stand-in (default: bench.py's 25M model)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, help="CPU threads (train.py --threads)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as tmp:
        root = Path(tmp)
        r = random.Random(7)
        data = root / "train.jsonl"
        data.write_text("".join(json.dumps(chat(r)) + "\n" for _ in range(a.steps * a.batch)))
        flags = ["--checkpoint-every", "0", "--eval-every", "0"] + (["--threads", str(a.threads)] if a.threads else [])
        if a.model_dir:
            model_path, base = a.model_dir, Path(a.model_dir).name
        else:
            tiny = root / "model.json"
            tiny.write_text(Path(a.tiny_config).read_text() if a.tiny_config else json.dumps(MODEL))
            model_path, base = str(root / "none"), "llama-3.1-8b"
            flags += ["--init-tiny", "--tiny-config", str(tiny)]
        config = {
            "protocol": 1, "jobId": "bench", "baseModel": base, "modelPath": model_path,
            "trainingFile": str(data), "validationFile": None,
            "hyperparameters": {"epochs": 1, "learningRate": 2e-4, "batchSize": a.batch, "warmupSteps": 0},
            "maxSequenceLength": 4096, "seed": 1, "epochs": {"from": 1, "to": 1}, "resumeFrom": None,
        }
        results = [run(root, config, qlora, flags) for qlora in (False, True)]

    print(f"device: {results[0]['device']}; {results[0]['loaded']}")
    if results[1]["weights"]:
        print(results[1]["weights"])
    print("\n| run | steps | real tokens | seconds | tokens/s | peak memory |\n|---|---|---|---|---|---|")
    for x in results:
        print(f"| {x['name']} | {a.steps} | {x['tokens']} | {x['seconds']:.1f} | {x['tokens'] / x['seconds']:.0f} | "
              f"{x['peak'] / 2**30:.2f} GiB |")
    lora, qlora = results
    print(f"\nQLoRA: {(qlora['tokens'] / qlora['seconds']) / (lora['tokens'] / lora['seconds']):.2f}x LoRA's tokens/s, "
          f"{qlora['peak'] / lora['peak']:.2f}x its peak memory")


if __name__ == "__main__":
    main()
