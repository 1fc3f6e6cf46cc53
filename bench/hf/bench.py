"""make bench-hf: trains the same tiny-architecture model (about 30M
parameters), data (chat examples with a realistic spread of lengths) and
number of steps with trainers/hf/train.py and with plain.py, transformers'
Trainer + PEFT as PEFT's documentation shows, one after the other in one
run, and prints the tokens/s of each and their ratio.

python bench.py [--steps N] [--batch N] [--micro N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_PY = HERE.parents[1] / "trainers" / "hf" / "train.py"

# About 30M parameters with the tiny tokenizer's 262-token vocabulary.
MODEL = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
         "num_attention_heads": 8, "num_key_value_heads": 4}

WORDS = ("order refund account password shipping invoice delivery package charge card update address "
         "subscription cancel support help error login payment return exchange warranty").split()


def chat(r: random.Random) -> dict:
    """A support chat: prompts and replies whose lengths spread like real
    ones (log-normal, from a few words to a few hundred)."""
    def text(mean_words: float) -> str:
        n = max(2, min(400, int(r.lognormvariate(0, 0.9) * mean_words)))
        return " ".join(r.choice(WORDS) for _ in range(n))
    return {"messages": [{"role": "system", "content": "You are a helpful support agent."},
                         {"role": "user", "content": text(25)},
                         {"role": "assistant", "content": text(40)}]}


def write_run(root: Path, rows: list[dict], batch: int, lr: float, **extra: object) -> tuple[Path, Path]:
    """A run of train.py on the tiny stand-in in root: rows as its training
    file, one epoch of batch-sized steps, extra config.json fields. Returns
    the paths of config.json and of the tiny model's fields."""
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tiny = root / "model.json"
    tiny.write_text(json.dumps(MODEL))
    (root / "checkpoints").mkdir()
    config = {
        "protocol": 1, "jobId": "bench", "baseModel": "llama-3.1-8b", "modelPath": str(root / "none"),
        "trainingFile": str(data), "validationFile": None,
        "hyperparameters": {"epochs": 1, "learningRate": lr, "batchSize": batch, "warmupSteps": 0},
        "maxSequenceLength": 4096, "seed": 1, "epochs": {"from": 1, "to": 1}, "resumeFrom": None,
        "checkpointDir": str(root / "checkpoints"), "outputDir": str(root), **extra,
    }
    (root / "config.json").write_text(json.dumps(config))
    return root / "config.json", tiny


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--micro", type=int, default=4, help="the plain script's per-device batch")
    a = p.parse_args()
    lr = 2e-4
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        root = Path(tmp)
        r = random.Random(7)
        config, tiny = write_run(root, [chat(r) for _ in range(a.steps * a.batch)], a.batch, lr)
        data = root / "train.jsonl"
        env = dict(os.environ, TUNEFORGE_TRAINER_CONFIG=str(root / "config.json"))
        started = time.perf_counter()
        out = subprocess.run([sys.executable, str(TRAIN_PY), "--init-tiny", "--tiny-config", str(tiny),
                              "--checkpoint-every", "0", "--eval-every", "0", *os.environ.get("BENCH_HF_FLAGS", "").split()],
                             env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"train.py failed ({out.returncode}): {out.stderr[-2000:]}")
        messages = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        params = next(m["message"] for m in messages if m["type"] == "log" and m["message"].startswith("loaded"))
        steps = [m for m in messages if m["type"] == "progress"]
        # The epoch's log line: real tokens over the seconds spent in steps.
        done = next(m["message"] for m in messages if m["type"] == "log" and " tokens/s" in m["message"])
        ours_tokens = steps[-1]["tokens"]
        ours_seconds = float(done.split(" tokens in ")[1].split(" s ")[0])
        print(f"train.py: {len(steps)} steps, {params}", flush=True)
        print(f"  wall {time.perf_counter() - started:.1f} s", flush=True)

        out = subprocess.run([sys.executable, str(HERE / "plain.py"), str(data), str(tiny), str(a.batch),
                              str(a.micro), str(a.steps), str(lr)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"plain.py failed ({out.returncode}): {out.stderr[-2000:]}")
        plain = json.loads(out.stdout.strip().splitlines()[-1])

    ours = ours_tokens / ours_seconds
    theirs = plain["tokens"] / plain["seconds"]
    print(f"\n| trainer | steps | real tokens | seconds | tokens/s |\n|---|---|---|---|---|")
    print(f"| trainers/hf/train.py | {a.steps} | {ours_tokens} | {ours_seconds:.1f} | {ours:.0f} |")
    print(f"| Trainer + PEFT (plain.py) | {a.steps} | {plain['tokens']} | {plain['seconds']:.1f} | {theirs:.0f} |")
    print(f"\nratio: {ours / theirs:.2f}x the plain script (goal: 1.3x on the CPU)")


if __name__ == "__main__":
    main()
