"""make bench-dpo: DPO by trainers/hf/train.py against TRL's DPOTrainer
(plain_dpo.py, as TRL's documentation shows it) on the same model (make
bench-hf's), preference pairs and steps, one after the other: pairs and
tokens a second of each, peak memory, and the ratio.

python bench/hf/dpo.py [--steps N] [--batch N] [--micro N] [--threads N]

Tokens are both outputs' sequences of every pair, as train.py counts them
(the prompt twice); TRL's run trains the same pairs. train.py's seconds are
its steps' plus its one reference pass over the pairs before the first step;
TRL's are trainer.train()'s, whose steps each run the reference (the model
with the adapter disabled) on their micro-batches. Peak memory is each
process's peak resident memory on the CPU, libraries included, or torch's
peak allocation on a GPU for train.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import WORDS, write_run  # noqa: E402  (make bench-hf's words and run)

BETA = 0.1


def pair(r: random.Random) -> dict:
    """A support question and two replies of log-normal lengths, the
    preferred one on topic."""
    def text(mean_words: float, words: tuple[str, ...] = tuple(WORDS)) -> str:
        n = max(2, min(300, int(r.lognormvariate(0, 0.9) * mean_words)))
        return " ".join(r.choice(words) for _ in range(n))
    question = text(25)
    on_topic = tuple(w for w in WORDS if w in question.split()) or tuple(WORDS)
    return {"input": {"messages": [{"role": "system", "content": "You are a helpful support agent."},
                                   {"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": text(30, on_topic)}],
            "non_preferred_output": [{"role": "assistant", "content": text(30)}]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--micro", type=int, default=2, help="TRL's per-device batch (pairs)")
    p.add_argument("--threads", type=int, help="CPU threads (train.py --threads; torch's in TRL's run)")
    a = p.parse_args()
    lr = 2e-4
    env = dict(os.environ)
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        root = Path(tmp)
        r = random.Random(7)
        config, tiny = write_run(root, [pair(r) for _ in range(a.steps * a.batch)], a.batch, lr,
                                 method={"type": "dpo", "dpo": {"beta": BETA}})
        data = root / "train.jsonl"
        flags = ["--init-tiny", "--tiny-config", str(tiny), "--checkpoint-every", "0", "--eval-every", "0"]
        if a.threads:
            flags += ["--threads", str(a.threads)]
        # qlora.py's child mode: train.py in a process that ends by printing its peak memory.
        out = subprocess.run([sys.executable, str(HERE / "qlora.py"), "--child", str(config), *flags],
                             env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"train.py failed ({out.returncode}): {out.stderr[-2000:]}")
        messages = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        logs = [m["message"] for m in messages if m["type"] == "log"]
        done = next(m for m in logs if " tokens/s" in m)
        reference = next(m for m in logs if m.startswith("reference log-probabilities of"))
        tokens = [m for m in messages if m["type"] == "progress"][-1]["tokens"]
        ours = {"seconds": float(done.split(" tokens in ")[1].split(" s ")[0]) + float(reference.split(" in ")[1].split(" s")[0]),
                "peak": messages[-1]["bytes"], "device": messages[-1]["device"],
                "loss": float(done.split("training loss ")[1].split(";")[0])}
        print(f"train.py: {next(m for m in logs if m.startswith('loaded'))}\n  {reference}\n  {done}", flush=True)

        out = subprocess.run([sys.executable, str(HERE / "plain_dpo.py"), str(data), str(tiny), str(a.batch),
                              str(a.micro), str(a.steps), str(lr), str(BETA)], env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"plain_dpo.py failed ({out.returncode}): {out.stderr[-2000:]}")
        theirs = json.loads(out.stdout.strip().splitlines()[-1])

    pairs = a.steps * a.batch
    print(f"\ndevice: {ours['device']}\n\n| trainer | steps | pairs | tokens | seconds | pairs/s | tokens/s | peak memory |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, x in (("trainers/hf/train.py", ours), ("TRL DPOTrainer + PEFT (plain_dpo.py)", theirs)):
        print(f"| {name} | {a.steps} | {pairs} | {tokens} | {x['seconds']:.1f} | {pairs / x['seconds']:.2f} | "
              f"{tokens / x['seconds']:.0f} | {x['peak'] / 2**30:.2f} GiB |")
    print(f"\nmean training loss: train.py {ours['loss']:.4f}, TRL {theirs['loss']:.4f}")
    print(f"train.py: {theirs['seconds'] / ours['seconds']:.2f}x TRL's speed, {ours['peak'] / theirs['peak']:.2f}x its peak memory")


if __name__ == "__main__":
    main()
