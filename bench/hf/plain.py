"""The baseline of make bench-hf: LoRA fine-tuning written the way PEFT's
documentation shows it, with transformers' Trainer: get_peft_model, the
chat template tokenized whole, DataCollatorForLanguageModeling padding each
batch, gradient accumulation to the effective batch.

python plain.py DATA.jsonl TINY_CONFIG.json BATCH MICRO STEPS LR
prints one JSON line: {"tokens": real tokens trained, "seconds": training time}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "trainers" / "hf"))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments  # noqa: E402

import train  # noqa: E402  (only for the same tiny model and tokenizer)


def main() -> None:
    data, tiny, batch, micro, steps, lr = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:7])
    batch, micro, steps = int(batch), int(micro), int(steps)
    fields = train.tiny_fields("llama-3.1-8b", tiny)
    tokenizer = train.build_tiny_tokenizer(fields)
    model = train.build_tiny_model("llama-3.1-8b", fields, tokenizer)
    model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ))
    rows = [json.loads(line)["messages"] for line in Path(data).read_text().splitlines()]
    examples = [{"input_ids": tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"]}
                for m in rows[: steps * batch]]
    tokens = sum(len(e["input_ids"]) for e in examples)
    args = TrainingArguments(
        output_dir=str(Path(data).parent / "plain-out"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=batch // micro, learning_rate=lr, max_steps=steps, num_train_epochs=1,
        logging_steps=steps, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(), dataloader_num_workers=0, seed=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    started = time.perf_counter()
    trainer.train()
    print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()
