"""The baseline of make bench-dpo: DPO written the way TRL's documentation
shows it: DPOTrainer with a PEFT LoraConfig (the reference is the model
with the adapter disabled, as train.py's), the conversational preference
format, gradient accumulation to the effective batch.

python plain_dpo.py PAIRS.jsonl TINY_CONFIG.json BATCH MICRO STEPS LR BETA
prints one JSON line: {"seconds": training time, "peak": peak RSS bytes,
"loss": the mean training loss}.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "trainers" / "hf"))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

import train  # noqa: E402  (only for the same tiny model and tokenizer)


def main() -> None:
    data, tiny = sys.argv[1], sys.argv[2]
    batch, micro, steps = map(int, sys.argv[3:6])
    lr, beta = map(float, sys.argv[6:8])
    fields = train.tiny_fields("llama-3.1-8b", tiny)
    tokenizer = train.build_tiny_tokenizer(fields)
    model = train.build_tiny_model("llama-3.1-8b", fields, tokenizer)
    rows = [json.loads(line) for line in Path(data).read_text().splitlines()][: steps * batch]
    dataset = Dataset.from_list([
        {"prompt": r["input"]["messages"], "chosen": r["preferred_output"], "rejected": r["non_preferred_output"]}
        for r in rows
    ])
    args = DPOConfig(
        output_dir=str(Path(data).parent / "plain-dpo-out"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=batch // micro, learning_rate=lr, max_steps=steps, num_train_epochs=1,
        beta=beta, max_length=4096, logging_steps=steps, save_strategy="no", report_to=[],
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(), dataloader_num_workers=0, seed=1,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ))
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": peak, "loss": result.training_loss}), flush=True)


if __name__ == "__main__":
    main()
