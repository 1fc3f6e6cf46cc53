#!/usr/bin/env python3
"""tuneforge's reference trainer: LoRA fine-tuning with transformers + peft + torch.

It speaks the trainer protocol, version 1 (docs/trainer-protocol.md): it reads
config.json from TUNEFORGE_TRAINER_CONFIG, trains epochs.from..epochs.to and
reports on stdout in JSON lines (progress, eval, checkpoint, log, result).
Exit codes: 0 done, 2 untrainable data or configuration, 3 out of GPU memory,
143 stopped by SIGTERM; anything else is a crash that the worker retries.

`python3 train.py --write-tiny DIR` instead writes the tiny random models of
tiny/*.json into DIR/<baseModel>/. See README.md for the flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

# Weights are never downloaded. Set before transformers, peft or
# huggingface_hub is imported (they are imported lazily, below).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch
import torch.nn.functional as F

PROTOCOL = 1
EXIT_UNTRAINABLE = 2
EXIT_OOM = 3
EXIT_STOPPED = 143  # 128 + SIGTERM, what a shell reports for a process it ended
IGNORE_INDEX = -100  # label of a token the loss skips (torch's cross_entropy default)
CHECKPOINT_FORMAT = 1

TINY_DIR = Path(__file__).resolve().parent / "tiny"

# LoRA goes on every projection of attention and MLP that the model has.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# The chat template of the tiny tokenizer, and of a real tokenizer that has
# none (a base model's). `~` rather than `+`: a tokenizer without an eos_token
# renders "" there instead of failing. The tiny tokenizer has the role markers
# as special tokens, so a prefix of a conversation tokenizes as a prefix.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' ~ message['role'] ~ '|>\n' ~ message['content'] ~ eos_token ~ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
TINY_BOS, TINY_EOS, TINY_PAD = "<s>", "</s>", "<pad>"
TINY_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

Message = dict[str, str]
Render = Callable[[list[Message], bool], list[int]]
T = TypeVar("T")


class Untrainable(Exception):
    """The data or configuration cannot be trained: exit 2, not retried."""


# ---------------------------------------------------------------- messages


def emit(kind: str, **fields: Any) -> None:
    """Print one protocol message. Flushed at once: stdout is a pipe."""
    print(json.dumps({"type": kind, **fields}), flush=True)


def log(level: str, message: str) -> None:
    emit("log", level=level, message=message)


# ------------------------------------------------------------------ config


@dataclass(frozen=True)
class Config:
    """config.json, checked."""

    base_model: str
    model_path: str
    training_file: str
    validation_file: str | None
    epochs: int  # the job's total
    learning_rate: float
    batch_size: int  # the effective batch
    warmup_steps: int
    max_sequence_length: int
    seed: int
    epoch_from: int
    epoch_to: int
    resume_from: str | None
    checkpoint_dir: str
    output_dir: str


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _field(obj: Any, key: str, kind: type, where: str = "", optional: bool = False) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise Untrainable(f"config.json: {where}{key} must be {_KIND_NAMES[kind]}, not {value!r}")
    return value


def parse_config(raw: Any) -> Config:
    """Checks config.json; the protocol version first, so a newer worker is told plainly."""
    if not isinstance(raw, dict):
        raise Untrainable("config.json is not a JSON object")
    if raw.get("protocol") != PROTOCOL:
        raise Untrainable(
            f"trainer protocol {raw.get('protocol')!r} is not supported; this trainer speaks protocol {PROTOCOL}"
        )
    hp, epochs = raw.get("hyperparameters"), raw.get("epochs")
    cfg = Config(
        base_model=_field(raw, "baseModel", str),
        model_path=_field(raw, "modelPath", str),
        training_file=_field(raw, "trainingFile", str),
        validation_file=_field(raw, "validationFile", str, optional=True),
        epochs=_field(hp, "epochs", int, "hyperparameters."),
        learning_rate=_field(hp, "learningRate", float, "hyperparameters."),
        batch_size=_field(hp, "batchSize", int, "hyperparameters."),
        warmup_steps=_field(hp, "warmupSteps", int, "hyperparameters."),
        max_sequence_length=_field(raw, "maxSequenceLength", int),
        seed=_field(raw, "seed", int),
        epoch_from=_field(epochs, "from", int, "epochs."),
        epoch_to=_field(epochs, "to", int, "epochs."),
        resume_from=_field(raw, "resumeFrom", str, optional=True),
        checkpoint_dir=_field(raw, "checkpointDir", str),
        output_dir=_field(raw, "outputDir", str),
    )
    problems = [
        (cfg.epochs < 1, "hyperparameters.epochs must be at least 1"),
        (cfg.batch_size < 1, "hyperparameters.batchSize must be at least 1"),
        (not cfg.learning_rate > 0, "hyperparameters.learningRate must be positive"),
        (cfg.warmup_steps < 0, "hyperparameters.warmupSteps must not be negative"),
        (cfg.max_sequence_length < 2, "maxSequenceLength must be at least 2"),
        (
            not 1 <= cfg.epoch_from <= cfg.epoch_to <= cfg.epochs,
            f"epochs {cfg.epoch_from}..{cfg.epoch_to} are not within 1..{cfg.epochs}",
        ),
    ]
    for bad, why in problems:
        if bad:
            raise Untrainable(f"config.json: {why}")
    return cfg


def load_config() -> Config:
    path = os.environ.get("TUNEFORGE_TRAINER_CONFIG")
    if not path:
        raise Untrainable("TUNEFORGE_TRAINER_CONFIG is not set")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise Untrainable(f"cannot read config {path}: {e}") from None
    return parse_config(raw)


# -------------------------------------------------------------------- data


def normalize_example(obj: Any) -> list[Message]:
    """A dataset line as chat messages: prompt/completion becomes [user, assistant]."""
    if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
        messages = []
        for m in obj["messages"]:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise ValueError('each message must be {"role": string, "content": string}')
            # Only role and content: other keys could change what a template renders.
            messages.append({"role": m["role"], "content": m["content"]})
        return messages
    if isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str):
        return [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
    raise ValueError('expected {"messages": [...]} or {"prompt": ..., "completion": ...}')


def read_jsonl(path: str) -> list[list[Message]]:
    """Reads a dataset file; tuneforge validated it, so a bad line is untrainable data."""
    examples = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    examples.append(normalize_example(json.loads(line)))
                except ValueError as e:
                    raise Untrainable(f"{os.path.basename(path)} line {n}: {e}") from None
    except OSError as e:
        raise Untrainable(f"cannot read {path}: {e}") from None
    return examples


@dataclass(frozen=True)
class Encoded:
    """One tokenized example; labels are IGNORE_INDEX outside assistant tokens."""

    input_ids: list[int]
    labels: list[int]

    @property
    def targets(self) -> int:
        """Tokens the loss covers. The first is never one: nothing precedes it to predict it from."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_example(messages: list[Message], render: Render, max_length: int) -> Encoded:
    """Tokenizes a conversation and labels its assistant tokens.

    For assistant message i, messages[:i] rendered with the generation prompt
    ends where its span starts, and messages[:i+1] ends where it ends (the
    end-of-turn tokens included, so the model learns to stop). Raises
    ValueError when nothing is left to train on.
    """
    ids = render(messages, False)
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        # An opening assistant message has no prompt to learn from, and
        # apply_chat_template cannot render the empty conversation before it.
        if message["role"] != "assistant" or i == 0:
            continue
        turn = render(messages[: i + 1], False)
        if ids[: len(turn)] != turn:
            # The template renders the conversation up to here differently
            # inside the whole one (Mistral's moves the system prompt into the
            # last user message), so where this turn lies is unknown.
            continue
        # The common prefix, not len(prompt): a token merged across the
        # boundary then starts the span one token early rather than late.
        start = common_prefix(render(messages[:i], True), turn)
        labels[start : len(turn)] = turn[start:]
    encoded = Encoded(ids[:max_length], labels[:max_length])
    if encoded.targets == 0:
        if Encoded(ids, labels).targets == 0:
            raise ValueError("it has no assistant reply to train on")
        raise ValueError(f"it has no assistant token within maxSequenceLength ({max_length} tokens)")
    return encoded


def chat_renderer(tokenizer: Any) -> Render:
    """Renders and tokenizes messages with the tokenizer's chat template."""
    from jinja2 import TemplateError

    def render(messages: list[Message], add_generation_prompt: bool) -> list[int]:
        try:
            ids = tokenizer.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=add_generation_prompt
            )
        except TemplateError as e:
            raise ValueError(f"the chat template rejects it ({e})") from None
        return list(ids)

    return render


def encode_file(path: str, render: Render, max_length: int, what: str) -> list[Encoded]:
    """Encodes a dataset file, skipping (with warnings) examples with nothing to train on."""
    examples = read_jsonl(path)
    encoded, skipped = [], 0
    for n, messages in enumerate(examples, 1):
        try:
            encoded.append(encode_example(messages, render, max_length))
        except ValueError as e:
            skipped += 1
            if skipped <= 5:  # a few examples; the count says the rest without flooding the job log
                log("warn", f"{what} example {n} skipped: {e}")
    if skipped:
        log("warn", f"skipped {skipped} of {len(examples)} {what} examples: nothing in them to train on")
    return encoded


def collate(batch: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pads a micro-batch: input ids, attention mask, labels."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
    return ids, mask, labels


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------- schedule


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The epoch's example order: a pure function of (seed, epoch), so a
    resumed run, on any host, sees the same batches."""
    generator = torch.Generator()
    generator.manual_seed((seed * 1000 + epoch) % (1 << 63))
    return torch.randperm(n_examples, generator=generator).tolist()


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = epoch_order(n_examples, seed, epoch)
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate multiplier of optimizer step `step` (1-based).

    Linear warmup reaching 1 at step warmup_steps, then a cosine decay that
    reaches 0 just after the job's last step (so no step is wasted at 0).
    """
    if step <= warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps - 1) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def default_every(flag: int | None, per_epoch: int) -> int:
    """A --*-every value: the flag, or about 4 times an epoch (0: epoch ends only)."""
    return max(1, -(-per_epoch // 4)) if flag is None else flag


def plan_epochs(
    epoch_from: int, epoch_to: int, resumed: tuple[int, int] | None, per_epoch: int
) -> list[tuple[int, int]]:
    """(epoch, first batch) for each epoch this process trains.

    resumed is (epoch, steps done in it) of the checkpoint resumed from. A
    checkpoint at the end of epoch_to leaves nothing to train: the process
    then only reports its result again.
    """
    if resumed is None:
        if epoch_from != 1:
            raise Untrainable(f"epochs.from is {epoch_from} but there is no checkpoint to resume from")
        epoch, batch = 1, 0
    else:
        epoch, batch = resumed
        if batch >= per_epoch:
            epoch, batch = epoch + 1, 0
    if not epoch_from <= epoch <= epoch_to + 1:
        raise Untrainable(
            f"the checkpoint resumed from continues at epoch {epoch}, batch {batch + 1}, "
            f"but this process trains epochs {epoch_from}..{epoch_to}"
        )
    return [(e, batch if e == epoch else 0) for e in range(epoch, epoch_to + 1)]


# ------------------------------------------------------------- tiny models


def byte_alphabet() -> list[str]:
    """The 256 printable characters that byte-level BPE (GPT-2, tokenizers'
    ByteLevel) uses for the byte values, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_seed(base_model: str) -> int:
    """A fixed seed per base model, so every process on every host builds the
    same tiny base weights: an adapter only fits the weights it was trained on."""
    return zlib.crc32(base_model.encode("utf-8"))


def tiny_fields(base_model: str, overrides_path: str | None) -> dict[str, Any]:
    """tiny/<baseModel>.json, with --tiny-config's fields over it."""
    path = TINY_DIR / f"{base_model}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TINY_DIR.glob("*.json")))
        raise Untrainable(f"no tiny model config for {base_model} in {TINY_DIR} (there are: {known})")
    fields = json.loads(path.read_text(encoding="utf-8"))
    if overrides_path:
        try:
            fields.update(json.loads(Path(overrides_path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise Untrainable(f"--tiny-config {overrides_path}: {e}") from None
    return fields


def build_tiny_tokenizer(fields: dict[str, Any]) -> Any:
    """A byte-level tokenizer built locally: one token per byte (BPE with no
    merges), special tokens for bos/eos/pad and the roles, and CHAT_TEMPLATE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in enumerate(byte_alphabet())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # Added here, in a fixed order, so their ids (256...) never vary.
    backend.add_special_tokens([TINY_BOS, TINY_EOS, TINY_PAD, *TINY_ROLE_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=TINY_BOS,
        eos_token=TINY_EOS,
        pad_token=TINY_PAD,
        additional_special_tokens=list(TINY_ROLE_TOKENS),
        model_max_length=fields.get("max_position_embeddings", 2048),
        clean_up_tokenization_spaces=False,  # decoding gives back exactly the bytes
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(base_model: str, fields: dict[str, Any], tokenizer: Any) -> Any:
    """A randomly initialised model of the base model's architecture, on the
    CPU in float32, identical on every host (see tiny_seed)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(fields)
    config = AutoConfig.for_model(
        fields.pop("model_type"),
        **fields,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(tiny_seed(base_model))
    return AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)


def write_tiny(directory: Path, overrides_path: str | None) -> None:
    """--write-tiny: saves every tiny model with its tokenizer as DIR/<baseModel>/,
    loadable like real weights (TUNEFORGE_MODEL_DIR=DIR)."""
    for path in sorted(TINY_DIR.glob("*.json")):
        fields = tiny_fields(path.stem, overrides_path)
        tokenizer = build_tiny_tokenizer(fields)
        model = build_tiny_model(path.stem, fields, tokenizer)
        out = directory / path.stem
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        n = sum(p.numel() for p in model.parameters())
        print(f"wrote {out} ({model.config.architectures[0]}, {n / 1e6:.2f}M parameters)", flush=True)


# ------------------------------------------------------------------- model


def load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    except OSError as e:
        raise Untrainable(f"cannot load the tokenizer from {model_path}: {e}") from None
    if tokenizer.chat_template is None:
        log("warn", f"the tokenizer in {model_path} has no chat template; using tuneforge's plain one")
        tokenizer.chat_template = CHAT_TEMPLATE  # saved with the adapter, so serving renders the same
    return tokenizer


def load_model(model_path: str, dtype: torch.dtype, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        # Straight onto the device: a model too big for it fails as out of
        # GPU memory (exit 3) rather than exhausting host memory first.
        return AutoModelForCausalLM.from_pretrained(
            model_path, local_files_only=True, torch_dtype=dtype, device_map=device
        )
    except OSError as e:
        raise Untrainable(f"cannot load the weights from {model_path}: {e}") from None


def add_lora(model: Any, args: argparse.Namespace, base_model: str) -> Any:
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets: list[str] | str = [t for t in LORA_TARGETS if t in present] or "all-linear"
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    # get_peft_model casts the adapter of a bf16 model to float32 (autocast_adapter_dtype).
    peft_model = get_peft_model(model, config)
    # The base model's name, not this host's path: the adapter moves between hosts.
    peft_model.peft_config["default"].base_model_name_or_path = base_model
    return peft_model


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the labelled tokens, each predicted from the
    tokens before it; in float32 whatever the logits' dtype."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        labels[:, 1:].flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


# ------------------------------------------------------------------ SIGTERM


class StopSignal:
    """SIGTERM: while loading, exit at once (nothing to save); once training,
    set a flag that the loop honours at the next optimizer-step boundary."""

    def __init__(self) -> None:
        self.loading = True
        self.requested = False
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.loading:
            # os.write and os._exit: print could be re-entered mid-line.
            os.write(2, b"stopped by SIGTERM while loading\n")
            os._exit(EXIT_STOPPED)
        self.requested = True


# ----------------------------------------------------------------- trainer


@dataclass
class TrainerState:
    """Where training stands; a checkpoint's trainer_state.json holds it."""

    step: int = 0  # global optimizer steps done
    epoch: int = 0  # the epoch of the last step
    epoch_step: int = 0  # steps done in that epoch
    tokens: int = 0  # non-padding input tokens trained on, across epochs
    epoch_loss_sum: float = 0.0  # summed token losses of that epoch so far...
    epoch_loss_tokens: int = 0  # ...over this many tokens: the epoch's training loss

    def epoch_loss(self) -> float | None:
        return self.epoch_loss_sum / self.epoch_loss_tokens if self.epoch_loss_tokens else None


class Trainer:
    def __init__(
        self,
        cfg: Config,
        args: argparse.Namespace,
        stop: StopSignal,
        model: Any,
        tokenizer: Any,
        train_set: list[Encoded],
        validation_set: list[Encoded],
        device: torch.device,
        bf16: bool,
    ) -> None:
        self.cfg, self.args, self.stop = cfg, args, stop
        self.model, self.tokenizer, self.device, self.bf16 = model, tokenizer, device, bf16
        self.train_set = train_set
        # Sorted by length: less padding, and the order of a sum is immaterial.
        self.validation_set = sorted(validation_set, key=lambda e: len(e.input_ids))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad_id if pad_id is not None else 0  # any id does: padding is masked and unlabelled
        self.micro_batch_size = args.micro_batch_size or min(cfg.batch_size, 4)
        self.per_epoch = steps_per_epoch(len(train_set), cfg.batch_size)
        self.total_steps = cfg.epochs * self.per_epoch
        self.eval_every = default_every(args.eval_every, self.per_epoch)
        self.checkpoint_every = default_every(args.checkpoint_every, self.per_epoch)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=0.0)
        # LambdaLR passes the number of steps taken; lr_factor wants the step about to be taken.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda done: lr_factor(done + 1, cfg.warmup_steps, self.total_steps)
        )
        self.state = TrainerState()
        self.resumed: tuple[int, int] | None = None
        self.start_step = 0  # the step this process started from
        # The step last checkpointed by this process: an announced checkpoint is
        # the worker's, never written twice. Even the step resumed from is
        # checkpointed again at the end: the worker wants one from this attempt.
        self.saved_step = -1
        self.evaluated_step = -1
        self.validation_loss: float | None = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    # -- checkpoints

    def checkpoint_meta(self) -> dict[str, Any]:
        s = self.state
        return {
            "format": CHECKPOINT_FORMAT,
            "step": s.step,
            "epoch": s.epoch,
            "epochStep": s.epoch_step,
            "stepsPerEpoch": self.per_epoch,
            "tokens": s.tokens,
            "epochLossSum": s.epoch_loss_sum,
            "epochLossTokens": s.epoch_loss_tokens,
            # What the data order and the adapter's shape depend on: a resume checks them.
            "baseModel": self.cfg.base_model,
            "seed": self.cfg.seed,
            "batchSize": self.cfg.batch_size,
            "numExamples": len(self.train_set),
            "loraR": self.args.lora_r,
        }

    def checkpoint(self) -> None:
        """Writes checkpointDir/step-<N> and announces it (once per step)."""
        if self.saved_step == self.state.step:
            return
        path = Path(self.cfg.checkpoint_dir) / f"step-{self.state.step}"
        path.mkdir(parents=True)
        self.model.save_pretrained(path / "adapter", save_embedding_layers=False)
        torch.save(self.optimizer.state_dict(), path / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), path / "scheduler.pt")
        torch.save(rng_state(), path / "rng_state.pt")
        (path / "trainer_state.json").write_text(json.dumps(self.checkpoint_meta(), indent=2) + "\n")
        self.saved_step = self.state.step
        emit("checkpoint", step=self.state.step, epoch=self.state.epoch, path=str(path))

    def restore(self, path: Path) -> None:
        """Restores a checkpoint exactly: adapter, optimizer, scheduler, RNG and data position.
        Called after everything that draws random numbers at start-up."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        try:
            meta = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise Untrainable(f"resumeFrom {path} is not a checkpoint of this trainer: {e}") from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise Untrainable(f"checkpoint {path} has format {meta.get('format')!r}, not {CHECKPOINT_FORMAT}")
        now = self.checkpoint_meta()
        changed = [
            f"{k} {meta.get(k)!r} (now {now[k]!r})"
            for k in ("baseModel", "seed", "batchSize", "numExamples", "loraR")
            if meta.get(k) != now[k]
        ]
        if changed:
            raise Untrainable(f"checkpoint {path} belongs to another run: " + ", ".join(changed))
        try:
            weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
            optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
            scheduler = torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True)
            rng = torch.load(path / "rng_state.pt", map_location="cpu", weights_only=True)
        except OSError as e:
            raise Untrainable(f"checkpoint {path} is incomplete: {e}") from None
        loaded = set_peft_model_state_dict(self.model, weights)
        if loaded.unexpected_keys:
            raise Untrainable(f"checkpoint {path} holds weights this model lacks: {loaded.unexpected_keys[:3]}")
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)
        set_rng_state(rng)
        self.state = TrainerState(
            step=meta["step"],
            epoch=meta["epoch"],
            epoch_step=meta["epochStep"],
            tokens=meta["tokens"],
            epoch_loss_sum=meta["epochLossSum"],
            epoch_loss_tokens=meta["epochLossTokens"],
        )
        self.resumed = (self.state.epoch, self.state.epoch_step)
        self.start_step = self.state.step
        log(
            "info",
            f"resumed from step {self.state.step}: epoch {self.state.epoch}, "
            f"{self.state.epoch_step} of {self.per_epoch} batches done",
        )

    # -- steps

    def train_step(self, batch: list[Encoded]) -> tuple[float, int]:
        """One optimizer step over an effective batch, by gradient accumulation.
        Returns the mean token loss and the number of loss tokens."""
        targets = sum(e.targets for e in batch)
        loss_sum = 0.0
        for micro in chunks(batch, self.micro_batch_size):
            ids, mask, labels = (t.to(self.device) for t in collate(micro, self.pad_id))
            with self.autocast():
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            loss = token_loss_sum(logits, labels)
            # Divided by the whole batch's token count: the gradient is the
            # batch's mean token loss however it is split into micro-batches.
            (loss / targets).backward()
            loss_sum += loss.item()
            del logits, loss  # free the logits before the next micro-batch's forward
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / targets, targets

    def evaluate(self) -> None:
        """Mean token loss over the validation set's assistant tokens, as an eval line.
        Abandoned if a stop comes meanwhile: the checkpoint matters more."""
        if not self.validation_set or self.evaluated_step == self.state.step:
            return
        self.model.eval()
        loss_sum, targets = 0.0, 0
        with torch.no_grad():
            for micro in chunks(self.validation_set, self.micro_batch_size):
                if self.stop.requested:
                    self.model.train()
                    return
                ids, mask, labels = (t.to(self.device) for t in collate(micro, self.pad_id))
                with self.autocast():
                    logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                loss_sum += token_loss_sum(logits, labels).item()
                targets += sum(e.targets for e in micro)
                del logits
        self.model.train()
        self.validation_loss = loss_sum / targets
        self.evaluated_step = self.state.step
        emit("eval", step=self.state.step, validationLoss=self.validation_loss)

    def stop_if_requested(self) -> None:
        """At a step boundary after SIGTERM: a last checkpoint if this process
        trained anything since its last one, then exit 143."""
        if not self.stop.requested:
            return
        if self.state.step > self.start_step:
            self.checkpoint()
        log("info", f"stopped by SIGTERM at step {self.state.step}")
        sys.exit(EXIT_STOPPED)

    def train_epoch(self, epoch: int, first_batch: int) -> None:
        batches = epoch_batches(len(self.train_set), self.cfg.batch_size, self.cfg.seed, epoch)
        if first_batch == 0:
            self.state.epoch_loss_sum, self.state.epoch_loss_tokens = 0.0, 0
        if first_batch < len(batches):
            log("info", f"epoch {epoch}: training batches {first_batch + 1}..{len(batches)} of {len(batches)}")
        seconds, tokens = 0.0, 0
        for index in range(first_batch, len(batches)):
            self.stop_if_requested()
            batch = [self.train_set[i] for i in batches[index]]
            learning_rate = self.optimizer.param_groups[0]["lr"]  # this step's, before the scheduler moves on
            started = time.perf_counter()
            loss, targets = self.train_step(batch)
            seconds += time.perf_counter() - started
            if not math.isfinite(loss):
                raise Untrainable(
                    f"the training loss is {loss} at step {self.state.step + 1}; try a lower learningRate"
                )
            batch_tokens = sum(len(e.input_ids) for e in batch)
            tokens += batch_tokens
            s = self.state
            s.step, s.epoch, s.epoch_step = s.step + 1, epoch, index + 1
            s.tokens += batch_tokens
            s.epoch_loss_sum += loss * targets
            s.epoch_loss_tokens += targets
            emit("progress", step=s.step, epoch=epoch, loss=loss, learningRate=learning_rate, tokens=s.tokens)
            if self.eval_every and s.step % self.eval_every == 0:
                self.evaluate()
            if self.checkpoint_every and s.step % self.checkpoint_every == 0:
                self.checkpoint()
            if self.args.step_delay:
                time.sleep(self.args.step_delay)
        self.stop_if_requested()
        if tokens:
            log(
                "info",
                f"epoch {epoch} done at step {self.state.step}: training loss {self.state.epoch_loss():.4f}; "
                f"{tokens} tokens in {seconds:.1f} s of training, {tokens / seconds:.0f} tokens/s",
            )
        self.evaluate()
        self.checkpoint()

    def run(self) -> None:
        plan = plan_epochs(self.cfg.epoch_from, self.cfg.epoch_to, self.resumed, self.per_epoch)
        self.model.train()
        self.stop.loading = False
        for epoch, first_batch in plan:
            self.train_epoch(epoch, first_batch)
        # A resume from the end of epochs.to trains nothing; its result still needs these.
        self.evaluate()
        self.checkpoint()
        out = Path(self.cfg.output_dir) / "adapter"
        self.model.save_pretrained(out, save_embedding_layers=False)
        self.tokenizer.save_pretrained(out)  # a serving backend loads the adapter with its tokenizer
        emit(
            "result",
            step=self.state.step,
            trainingLoss=self.state.epoch_loss(),
            validationLoss=self.validation_loss,
            tokens=self.state.tokens,
            outputPath=str(out),
        )


# -------------------------------------------------------------------- main


def train(args: argparse.Namespace, stop: StopSignal) -> None:
    cfg = load_config()
    tiny: dict[str, Any] | None = None
    if not (Path(cfg.model_path) / "config.json").is_file():
        if not args.init_tiny:
            raise Untrainable(
                f"no model weights at {cfg.model_path} (it has no config.json): put {cfg.base_model}'s "
                f"weights there, or run the trainer with --init-tiny to train a tiny random model"
            )
        tiny = tiny_fields(cfg.base_model, args.tiny_config)

    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        bf16 = torch.cuda.is_bf16_supported()
    else:
        device, bf16 = torch.device("cpu"), False
    dtype = torch.bfloat16 if bf16 else torch.float32

    # The data before the model: bad data fails in seconds, not after a long load.
    tokenizer = build_tiny_tokenizer(tiny) if tiny is not None else load_tokenizer(cfg.model_path)
    render = chat_renderer(tokenizer)
    started = time.perf_counter()
    train_set = encode_file(cfg.training_file, render, cfg.max_sequence_length, "training")
    if not train_set:
        raise Untrainable("no training example has an assistant token to train on")
    validation_set: list[Encoded] = []
    if cfg.validation_file is not None:
        validation_set = encode_file(cfg.validation_file, render, cfg.max_sequence_length, "validation")
        if not validation_set:
            log("warn", "no validation example has an assistant token; there will be no validation loss")
    log(
        "info",
        f"encoded {len(train_set)} training and {len(validation_set)} validation examples "
        f"in {time.perf_counter() - started:.1f} s",
    )

    started = time.perf_counter()
    if tiny is not None:
        model = build_tiny_model(cfg.base_model, tiny, tokenizer).to(device=device, dtype=dtype)
        source = "a tiny random model (--init-tiny)"
    else:
        model = load_model(cfg.model_path, dtype, device)
        source = cfg.model_path
    model.config.use_cache = False  # no generation here; the cache only costs memory
    if args.gradient_checkpointing:
        # Non-reentrant: gradients reach the adapter although the frozen embeddings need none.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    total = sum(p.numel() for p in model.parameters())
    # The job's seed fixes the adapter's initial weights (and dropout, until a resume restores the RNG).
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed % (1 << 63))
    model = add_lora(model, args, cfg.base_model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(
        "info",
        f"loaded {cfg.base_model} from {source}: {total / 1e6:.1f}M parameters, {dtype} on {device}, "
        f"in {time.perf_counter() - started:.1f} s; LoRA r={args.lora_r} alpha={args.lora_alpha}: "
        f"{trainable / 1e6:.2f}M trainable parameters",
    )

    trainer = Trainer(cfg, args, stop, model, tokenizer, train_set, validation_set, device, bf16)
    log(
        "info",
        f"{trainer.per_epoch} steps an epoch ({len(train_set)} examples, batchSize {cfg.batch_size} "
        f"in micro-batches of {trainer.micro_batch_size}), {trainer.total_steps} in all",
    )
    if cfg.resume_from is not None:
        trainer.restore(Path(cfg.resume_from))
    trainer.run()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="tuneforge's reference LoRA trainer (trainer protocol 1).")
    p.add_argument("--micro-batch-size", type=positive_int, metavar="N",
                   help="examples per forward pass; gradients accumulate to batchSize (default: min(batchSize, 4))")
    p.add_argument("--lora-r", type=positive_int, default=16, metavar="N", help="LoRA rank (default: 16)")
    p.add_argument("--lora-alpha", type=positive_int, default=32, metavar="N", help="LoRA alpha (default: 32)")
    p.add_argument("--lora-dropout", type=float, default=0.05, metavar="P", help="LoRA dropout (default: 0.05)")
    p.add_argument("--eval-every", type=non_negative_int, metavar="N",
                   help="evaluate every N steps and at each epoch's end; 0: at epoch ends only "
                        "(default: 4 times an epoch)")
    p.add_argument("--checkpoint-every", type=non_negative_int, metavar="N",
                   help="checkpoint every N steps and at each epoch's end; 0: at epoch ends only "
                        "(default: 4 times an epoch)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute activations in the backward pass, to fit long sequences (default: on)")
    p.add_argument("--init-tiny", action="store_true",
                   help="when modelPath has no weights, train a tiny random model of the base model's architecture")
    p.add_argument("--tiny-config", metavar="PATH",
                   help="a JSON object of model config fields over tiny/<baseModel>.json (a bigger tiny model)")
    p.add_argument("--write-tiny", metavar="DIR",
                   help="write every tiny model and its tokenizer to DIR/<baseModel>/ and exit")
    p.add_argument("--step-delay", type=float, default=0.0, metavar="SECONDS",
                   help="sleep after each step: for tests, so that a stop lands mid-epoch")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.write_tiny:
            write_tiny(Path(args.write_tiny), args.tiny_config)
        else:
            train(args, StopSignal())
    except Untrainable as e:
        log("error", str(e))
        return EXIT_UNTRAINABLE
    except torch.cuda.OutOfMemoryError as e:
        print(e, file=sys.stderr, flush=True)
        log(
            "error",
            "out of GPU memory: use a smaller batchSize (or --micro-batch-size), "
            "shorter examples, or a hardware pool with more GPU memory",
        )
        return EXIT_OOM
    return 0


if __name__ == "__main__":
    sys.exit(main())
