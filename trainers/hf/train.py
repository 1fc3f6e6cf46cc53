#!/usr/bin/env python3
"""tuneforge's reference trainer: LoRA fine-tuning with transformers + peft + torch.

It speaks the trainer protocol, version 1.1 (docs/trainer-protocol.md): it reads
config.json from TUNEFORGE_TRAINER_CONFIG, trains epochs.from..epochs.to and
reports on stdout in JSON lines (progress, eval, checkpoint, log, result); as
one of worldSize processes, one per GPU, it trains a sharded model with the
others (distributed.py).
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
from typing import Any, Callable, Sequence, TypeVar

# transformers loads only what is on disk (local_files_only as well);
# fetch.py alone downloads, a catalog model's pinned weights. Set before
# transformers is imported (lazily, below).
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import torch
import torch.nn.functional as F

import distributed  # several processes, one per GPU (protocol 1.1's worldSize)

PROTOCOL = 1
EXIT_UNTRAINABLE = 2
EXIT_OOM = 3
EXIT_STOPPED = 143  # 128 + SIGTERM, what a shell reports for a process it ended
EVAL_PROGRESS_EVERY = 5.0  # seconds between the evaluating messages of a long evaluation
IGNORE_INDEX = -100  # label of a token the loss skips (torch's cross_entropy default)
CHECKPOINT_FORMAT = 1
METHODS = ("supervised", "dpo")  # config.json's method.type
DEFAULT_BETA, MAX_BETA = 0.1, 10.0  # DPO's beta: the APIs' default and bound

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

# A chat message: role and content, and for an assistant message the
# optional OpenAI `weight` (0: not trained on). Templates see role and content only.
Message = dict[str, Any]
# A dataset line as read (chat messages; DPO's pair: dpo.py), and as encoded for training.
Line = TypeVar("Line")
Example = TypeVar("Example")
# Renders messages with the chat template (bool: add the generation prompt).
RenderText = Callable[[list[Message], bool], str]
# Tokenizes rendered text: token ids and each token's (start, end) in the text.
Tokenize = Callable[[str], tuple[list[int], list[tuple[int, int]]]]

# Stands in for a reply's content, to find where the template puts it.
REPLY_MARK = "TUNEFORGEREPLY5f0c"
PROMPT_MARK = "TUNEFORGEPROMPT5f0c"


class Untrainable(Exception):
    """The data or configuration cannot be trained: exit 2, not retried."""


# ---------------------------------------------------------------- messages


def emit(kind: str, **fields: Any) -> None:
    """Print one protocol message. Flushed at once: stdout is a pipe. Of
    several processes, rank 0 alone speaks."""
    if distributed.SPEAKS:
        print(json.dumps({"type": kind, **fields}), flush=True)


def log(level: str, message: str) -> None:
    emit("log", level=level, message=message)


def deterministic(error: BaseException) -> bool:
    """Whether loading failed for a reason that a retry would meet again
    (exit 2), rather than for want of memory, a device or an I/O error
    (a crash, retried)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return False
    if isinstance(error, OSError):
        return isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError))
    if isinstance(error, RuntimeError) and ("CUDA" in str(error) or "device" in str(error)):
        return False
    return True


def brief(error: BaseException, limit: int = 300) -> str:
    """A library's error for a log line: its first line, bounded (some list
    every architecture transformers knows)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    qlora: bool = False  # hyperparameters.qlora: 4-bit NF4 base weights (quant.py)
    lora_rank: int | None = None  # hyperparameters.loraRank; None: --lora-r
    method: str = "supervised"  # or "dpo" (dpo.py)
    beta: float | None = None  # DPO's beta; None for supervised training
    init_adapter: str | None = None  # a PEFT adapter directory to start from, else a fresh LoRA
    world_size: int = 1  # worldSize: the processes training the attempt, one per GPU (distributed.py)
    memory_retry: int = 0  # memoryRetry: earlier attempts of several processes that ran out of memory


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _field(obj: Any, key: str, kind: type, where: str = "", optional: bool = False) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise Untrainable(f"config.json: {where}{key} must be {_KIND_NAMES[kind]}, not {value!r}")
    return value


def parse_method(raw: Any) -> dict[str, Any]:
    """config.json's method as Config fields. Absent (a worker of protocol
    1.0): supervised. DPO's beta defaults to 0.1, as the APIs' does."""
    if raw is None:
        return {"method": "supervised"}
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in METHODS:
        raise Untrainable(
            f'config.json: method must be {{"type": "supervised"}} or {{"type": "dpo", "dpo": {{"beta": number}}}}, '
            f"not {raw!r:.100}"
        )
    if kind == "supervised":
        return {"method": kind}
    if not isinstance(raw.get("dpo", {}), dict):
        raise Untrainable(f"config.json: method.dpo must be an object, not {raw['dpo']!r:.100}")
    beta = _field(raw.get("dpo", {}), "beta", float, "method.dpo.", optional=True)
    beta = DEFAULT_BETA if beta is None else beta
    if not 0 < beta <= MAX_BETA:
        raise Untrainable(f"config.json: method.dpo.beta must be greater than 0 and at most {MAX_BETA:g}, not {beta}")
    return {"method": kind, "beta": beta}


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
        # Absent (a worker from before QLoRA): false.
        qlora=bool(_field(hp, "qlora", bool, "hyperparameters.", optional=True)),
        # Absent (a worker from before it): --lora-r.
        lora_rank=_field(hp, "loraRank", int, "hyperparameters.", optional=True),
        **parse_method(raw.get("method")),
        init_adapter=_field(raw, "initAdapter", str, optional=True),
        # Absent (a worker of protocol 1.0): one process.
        world_size=_field(raw, "worldSize", int, optional=True) or 1,
        # Absent: the epoch's first try.
        memory_retry=_field(raw, "memoryRetry", int, optional=True) or 0,
    )
    problems = [
        (cfg.epochs < 1, "hyperparameters.epochs must be at least 1"),
        (cfg.batch_size < 1, "hyperparameters.batchSize must be at least 1"),
        (not cfg.learning_rate > 0, "hyperparameters.learningRate must be positive"),
        (cfg.warmup_steps < 0, "hyperparameters.warmupSteps must not be negative"),
        (cfg.lora_rank is not None and cfg.lora_rank < 1, "hyperparameters.loraRank must be at least 1"),
        (cfg.max_sequence_length < 2, "maxSequenceLength must be at least 2"),
        (cfg.world_size < 1, "worldSize must be at least 1"),
        (cfg.memory_retry < 0, "memoryRetry must not be negative"),
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
            message: Message = {"role": m["role"], "content": m["content"]}
            if m["role"] == "assistant" and m.get("weight") is not None:
                weight = m["weight"]
                if isinstance(weight, bool) or weight not in (0, 1):
                    raise ValueError(f"an assistant message's weight must be 0 or 1, not {weight!r}")
                message["weight"] = int(weight)
            messages.append(message)
        return messages
    if isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str):
        return [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
    if isinstance(obj, dict) and "preferred_output" in obj:
        raise ValueError('this is preference data, which method {"type": "dpo"} trains; supervised training needs chat data')
    raise ValueError('expected {"messages": [...]} or {"prompt": ..., "completion": ...}')


def read_jsonl(path: str, normalize: Callable[[Any], Line] = normalize_example) -> list[Line]:
    """Reads a dataset file, each line by normalize (chat lines by default;
    DPO's preference pairs: dpo.py). tuneforge validated it, so a bad line
    is untrainable data."""
    examples = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    examples.append(normalize(json.loads(line)))
                except ValueError as e:
                    raise Untrainable(f"{os.path.basename(path)} line {n}: {e}") from None
    except OSError as e:
        raise Untrainable(f"cannot read {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise Untrainable(f"{os.path.basename(path)} is not UTF-8: {e}") from None
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


@dataclass(frozen=True)
class ChatFormat:
    """How conversations become tokens: the chat template and the tokenizer."""

    render: RenderText
    tokenize: Tokenize


def reply_text(messages: list[Message], i: int, render: RenderText) -> str:
    """What the model writes for assistant message i after the prompt that
    serving renders for it: the part of the turn the generation prompt leaves
    out (Mistral's leading space), the content as the template renders it
    (trimmed, say), and the end of the turn."""
    full = render(messages[: i + 1], False)
    marked = render([*messages[:i], {"role": "assistant", "content": REPLY_MARK}], False)
    head, _, tail = marked.partition(REPLY_MARK)
    content = full[len(head) :] if full.startswith(head) else messages[i]["content"] + tail
    # Mark the message before the reply too: what follows it up to the reply
    # in the whole conversation, less what follows it in the prompt.
    before = [*messages[: i - 1], {**messages[i - 1], "content": PROMPT_MARK}]
    in_prompt = render(before, True).rpartition(PROMPT_MARK)[2]
    in_turn = render([*before, {"role": "assistant", "content": REPLY_MARK}], False)
    between = in_turn.rpartition(PROMPT_MARK)[2].partition(REPLY_MARK)[0]
    return (between[len(in_prompt) :] if between.startswith(in_prompt) else "") + content


def encode_example(messages: list[Message], chat: ChatFormat, max_length: int) -> Encoded:
    """Tokenizes a conversation and labels its assistant replies.

    The text is the last reply as serving renders it: the conversation before
    it with the generation prompt, then the reply and its end of turn (so the
    model learns to stop). Every earlier reply whose own prompt and reply
    begin that text is labelled too; one the template renders differently in
    the longer conversation (Mistral's moves the system prompt to the last
    user turn) is context only. A reply with weight 0 is never labelled, and
    an opening assistant message (no prompt) neither. Raises ValueError when
    nothing is left to train on.
    """
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]
    if not replies:
        raise ValueError("it has no assistant reply to train on")
    last = replies[-1]
    prompt = chat.render(messages[:last], True)
    text = prompt + reply_text(messages, last, chat.render)
    spans = []
    for i in replies:
        if messages[i].get("weight", 1) == 0:
            continue
        if i == last:
            spans.append((len(prompt), len(text)))
            continue
        before = chat.render(messages[:i], True)
        turn = before + reply_text(messages, i, chat.render)
        if text.startswith(turn):
            spans.append((len(before), len(turn)))
    if not spans:
        raise ValueError("its last assistant reply has weight 0, and no earlier one can be trained on")
    ids, offsets = chat.tokenize(text)
    # A token that straddles a span's start (merged across the boundary) is
    # labelled: the span starts one token early rather than late.
    labels = [
        token if any(begin < e and (end > s or begin == end == s) for s, e in spans) else IGNORE_INDEX
        for token, (begin, end) in zip(ids, offsets)
    ]
    encoded = Encoded(ids[:max_length], labels[:max_length])
    if encoded.targets == 0:
        if Encoded(ids, labels).targets == 0:
            raise ValueError("it has no assistant reply to train on")
        raise ValueError(f"it has no assistant token within maxSequenceLength ({max_length} tokens)")
    return encoded


def chat_format(tokenizer: Any) -> ChatFormat:
    """The tokenizer's chat template and its tokenization with character offsets."""
    from jinja2 import TemplateError

    if not getattr(tokenizer, "is_fast", False):
        raise Untrainable("the tokenizer has no fast (tokenizer.json) form, which labelling needs")

    def render(messages: list[Message], add_generation_prompt: bool) -> str:
        clean = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt)
        except TemplateError as e:
            raise ValueError(f"the chat template rejects it ({e})") from None

    def tokenize(text: str) -> tuple[list[int], list[tuple[int, int]]]:
        # What apply_chat_template(tokenize=True) does: the template writes the special tokens.
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    return ChatFormat(render, tokenize)


def encode_file(
    path: str,
    chat: ChatFormat,
    max_length: int,
    what: str,
    normalize: Callable[[Any], Line] = normalize_example,
    encode: Callable[[Line, ChatFormat, int], Example] = encode_example,
) -> list[Example]:
    """Encodes a dataset file, skipping (with warnings) examples with nothing to train on."""
    examples = read_jsonl(path, normalize)
    encoded, skipped = [], 0
    for n, line in enumerate(examples, 1):
        try:
            encoded.append(encode(line, chat, max_length))
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


# ---------------------------------------------------------------- schedule


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)


_U64 = np.uint64


def seeded_stream(seed: int, count: int) -> np.ndarray:
    """count pseudo-random uint64s: SplitMix64 from seed, written out here so
    that the numbers never depend on a library's version or the host."""
    with np.errstate(over="ignore"):
        z = _U64(seed & (2**64 - 1)) + np.arange(1, count + 1, dtype=_U64) * _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The epoch's example order: a pure function of (seed, epoch), so a
    resumed run, on any host and with any library versions, sees the same
    batches. A Fisher-Yates shuffle driven by seeded_stream."""
    order = list(range(n_examples))
    draws = seeded_stream(seed * 1000 + epoch, max(0, n_examples - 1)).tolist()
    for k, i in enumerate(range(n_examples - 1, 0, -1)):
        j = draws[k] % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


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


def tiny_fields(base_model: str, overrides_path: str | None) -> dict[str, Any]:
    """tiny/<baseModel>.json, with --tiny-config's fields over it."""
    path = TINY_DIR / f"{base_model}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TINY_DIR.glob("*.json")))
        raise Untrainable(f"no tiny model config for {base_model} in {TINY_DIR} (there are: {known})")
    fields = json.loads(path.read_text(encoding="utf-8"))
    if overrides_path:
        try:
            overrides = json.loads(Path(overrides_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise Untrainable(f"--tiny-config {overrides_path}: {e}") from None
        if not isinstance(overrides, dict):
            raise Untrainable(f"--tiny-config {overrides_path}: not a JSON object of model config fields")
        fields.update(overrides)
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
    """A random model of the base model's architecture, on the CPU in float32,
    identical on every host (see init_tiny_weights): an adapter only fits the
    base weights it was trained on."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(fields)
    try:
        config = AutoConfig.for_model(
            fields.pop("model_type", None),
            **fields,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except Exception as e:  # whatever transformers raises, the same fields fail the same way
        if not deterministic(e):
            raise
        raise Untrainable(f"the tiny model config of {base_model} cannot build a model: {brief(e)}") from None
    init_tiny_weights(model, base_model, fields.get("initializer_range", 0.02))
    return model


def init_tiny_weights(model: Any, base_model: str, initializer_range: float) -> None:
    """Sets every weight from seeded_stream, seeded by the base model and the
    parameter's name: norms 1, biases 0, the rest uniform with the standard
    deviation initializer_range. transformers' own initialisation changes
    between releases; these weights never do."""
    bound = initializer_range * math.sqrt(3.0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith(".bias"):
                param.zero_()
            elif param.dim() == 1:
                param.fill_(1.0)
            else:
                draws = seeded_stream(zlib.crc32(f"{base_model}/{name}".encode("utf-8")), param.numel())
                unit = (draws >> _U64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
                values = torch.from_numpy((unit * 2.0 - 1.0) * bound).reshape(param.shape)
                param.copy_(values.to(param.dtype))


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
    except Exception as e:  # tokenizers raises plain Exceptions for a file it cannot read
        if not deterministic(e):
            raise
        raise Untrainable(f"cannot load the tokenizer from {model_path}: {brief(e)}") from None
    if tokenizer.chat_template is None:
        log("warn", f"the tokenizer in {model_path} has no chat template; using tuneforge's plain one")
        tokenizer.chat_template = CHAT_TEMPLATE  # saved with the adapter, so serving renders the same
    return tokenizer


def load_model(model_path: str, dtype: torch.dtype, device: torch.device, quantization: Any = None) -> Any:
    """quantization: QLoRA's BitsAndBytesConfig (quant.py), or None."""
    from transformers import AutoModelForCausalLM

    try:
        # Straight onto the device: a model too big for it fails as out of
        # GPU memory (exit 3) rather than exhausting host memory first. With
        # QLoRA each weight is quantized as it arrives: the bf16 model never
        # has to fit.
        return AutoModelForCausalLM.from_pretrained(
            model_path, local_files_only=True, dtype=dtype, device_map=device, quantization_config=quantization
        )
    except Exception as e:
        # An unknown architecture, a bad config or missing files: not retried.
        if not deterministic(e):
            raise
        raise Untrainable(f"cannot load the model from {model_path}: {brief(e)}") from None


def check_adapter(path: str, base_model: str, rank: int | None = None) -> None:
    """initAdapter, before anything loads: a PEFT LoRA adapter of this base
    model, and of rank (hyperparameters.loraRank) when that is given."""
    try:
        config = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise Untrainable(f"initAdapter {path} is not a PEFT adapter directory: {e}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise Untrainable(f"initAdapter {path} is not a LoRA adapter")
    if config.get("base_model_name_or_path") != base_model:
        raise Untrainable(
            f"initAdapter {path} was trained on {config.get('base_model_name_or_path')!r}, not {base_model}: "
            f"an adapter fits only the base model it was trained on"
        )
    if rank is not None and config.get("r") != rank:
        raise Untrainable(
            f"initAdapter {path} has LoRA rank {config.get('r')!r}, and hyperparameters.loraRank is {rank}: "
            f"a job that starts from an adapter trains at its rank"
        )


def add_lora(model: Any, args: argparse.Namespace, cfg: Config) -> Any:
    """A fresh LoRA adapter on the model, of rank hyperparameters.loraRank
    (else --lora-r), or initAdapter's (see check_adapter) with its own
    shape, to train."""
    from peft import LoraConfig, PeftModel, get_peft_model

    # The base model's name, not this host's path, in the adapter's config and
    # model card: the adapter moves between hosts.
    model.config.name_or_path = model.name_or_path = cfg.base_model
    # Either way the adapter of a bf16 model is cast to float32 (autocast_adapter_dtype).
    if cfg.init_adapter is not None:
        peft_model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
    else:
        present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        targets: list[str] | str = [t for t in LORA_TARGETS if t in present] or "all-linear"
        rank = cfg.lora_rank or args.lora_r
        # alpha/r, the scale of the adapter's update, stays --lora-alpha/--lora-r
        # whatever the job's rank (an integer where it can be, as PEFT writes it).
        alpha = args.lora_alpha * rank / args.lora_r
        config = LoraConfig(
            r=rank,
            lora_alpha=int(alpha) if alpha.is_integer() else alpha,
            lora_dropout=args.lora_dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = cfg.base_model
    return peft_model


# Labelled positions whose logits are computed at once: 4,096 x a 128k
# vocabulary is 2 GB in float32, whatever the micro-batch.
LOSS_CHUNK = 4096


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def labelled_loss_sum(
    hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, chunk: int = LOSS_CHUNK
) -> torch.Tensor:
    """Summed cross-entropy of the labelled tokens, each predicted from the
    hidden state before it, in float32. Logits exist only for labelled
    positions, a chunk at a time; in training each chunk's are recomputed in
    the backward pass rather than kept."""
    from torch.utils.checkpoint import checkpoint

    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[:, :-1][keep], targets[keep]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.numel(), chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, h, t, head, use_reentrant=False)
        else:
            total = total + _chunk_loss(h, t, head)
    return total


def choose_precision(cuda: bool, bf16_native: bool) -> tuple[torch.dtype, bool]:
    """The base weights' and autocast's dtype, and whether the loss is scaled.
    bf16 where the GPU has it natively; fp16 with loss scaling on a GPU that
    would only emulate bf16 (slowly); float32 on the CPU."""
    if not cuda:
        return torch.float32, False
    if bf16_native:
        return torch.bfloat16, False
    return torch.float16, True


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
        dtype: torch.dtype,
        scale_loss: bool,
        world: distributed.World | None = None,
    ) -> None:
        self.cfg, self.args, self.stop = cfg, args, stop
        self.world = world or distributed.World()  # one process, or this one's world
        self.model, self.tokenizer, self.device, self.dtype = model, tokenizer, device, dtype
        base = model.get_base_model()
        self.decoder, self.head = base.get_decoder(), base.get_output_embeddings()
        self.scaler = torch.amp.GradScaler("cuda") if scale_loss else None
        # Padded tokens a forward pass may take; halved when the GPU runs out of memory.
        self.token_budget = args.micro_batch_tokens
        # On the CPU one example's matrix products already keep the cores
        # busy, so an example a forward pass wastes nothing on padding
        # (make bench-hf: 1.75 times the tokens/s of padded micro-batches).
        self.micro_batch_size = args.micro_batch_size or (1 if device.type == "cpu" else None)
        self.checkpointing = bool(args.gradient_checkpointing)
        self.train_set = train_set
        # Sorted by length: less padding, and the order of a sum is immaterial.
        self.validation_set = sorted(validation_set, key=lambda e: len(e.input_ids))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad_id if pad_id is not None else 0  # any id does: padding is masked and unlabelled
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
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def set_checkpointing(self, on: bool) -> None:
        """Gradient checkpointing recomputes activations in the backward pass:
        about 1.4 times slower with a frozen base, so on only when memory needs it."""
        if on:
            # Non-reentrant: gradients reach the adapter although the frozen embeddings need none.
            self.model.get_base_model().gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.checkpointing = on

    def use_less_memory(self, retries: int) -> None:
        """memoryRetry: earlier attempts of several processes ran out of
        memory, and a process cannot retry a step alone (see shrink), so this
        attempt starts smaller: micro-batches of half the tokens for each
        retry, and gradient checkpointing (unless --no-gradient-checkpointing)."""
        self.token_budget = max(1, self.token_budget >> retries)
        if not self.checkpointing and self.args.gradient_checkpointing is None:
            self.set_checkpointing(True)
        log("warn", f"memory retry {retries}: an earlier attempt ran out of GPU memory, so micro-batches of at most "
                    f"{self.token_budget} tokens, gradient checkpointing {'on' if self.checkpointing else 'off'}")

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
            "loraR": self.model.peft_config["default"].r,  # --lora-r, or initAdapter's
            # The adapter fits the 4-bit base it trained on, not the bf16 one.
            "qlora": self.cfg.qlora,
            # The loss: a supervised checkpoint does not go on as DPO, nor one DPO with another beta.
            "method": self.cfg.method,
            "beta": self.cfg.beta,
            # How the last step was split: a resume splits alike.
            "microBatchTokens": self.token_budget,
            "gradientCheckpointing": self.checkpointing,
            # The processes that wrote it, each with its RNG state and its slice of each batch.
            "worldSize": self.world.size,
        }

    def checkpoint(self) -> None:
        """Writes checkpointDir/step-<N> and announces it (once per step)."""
        if self.saved_step == self.state.step:
            return
        path = Path(self.cfg.checkpoint_dir) / f"step-{self.state.step}"
        # Of several processes, every one gives its part and rank 0 writes the whole.
        adapter, optimizer, rng = self.world.full_state(self.model, self.optimizer, rng_state())
        if self.world.speaks:
            path.mkdir(parents=True)
            self.model.save_pretrained(path / "adapter", save_embedding_layers=False, state_dict=adapter)
            torch.save(optimizer, path / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), path / "scheduler.pt")
            torch.save(rng, path / "rng_state.pt")
            if self.scaler is not None:
                torch.save(self.scaler.state_dict(), path / "scaler.pt")
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
        meta.setdefault("qlora", False)  # a checkpoint from before QLoRA
        meta.setdefault("method", "supervised")  # ... or before DPO
        meta.setdefault("beta", None)
        changed = [
            f"{k} {meta.get(k)!r} (now {now[k]!r})"
            for k in ("baseModel", "seed", "batchSize", "numExamples", "loraR", "qlora", "method", "beta")
            if meta.get(k) != now[k]
        ]
        if changed:
            raise Untrainable(f"checkpoint {path} belongs to another run: " + ", ".join(changed))
        written_by = meta.get("worldSize", 1)
        if written_by != self.world.size:
            log(
                "warn",
                f"checkpoint {path} was written by {written_by} process(es) and {self.world.size} resume it: "
                "training goes on, but not exactly as it would have (each process has its own RNG and slice of a batch)",
            )
        try:
            weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
            optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
            scheduler = torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True)
            rng = torch.load(path / "rng_state.pt", map_location="cpu", weights_only=True)
        except OSError as e:
            raise Untrainable(f"checkpoint {path} is incomplete: {e}") from None
        if self.world.size > 1:
            unexpected = self.world.load_state(self.model, self.optimizer, weights, optimizer)
        else:
            unexpected = set_peft_model_state_dict(self.model, weights).unexpected_keys
            self.optimizer.load_state_dict(optimizer)
        if unexpected:
            raise Untrainable(f"checkpoint {path} holds weights this model lacks: {unexpected[:3]}")
        self.scheduler.load_state_dict(scheduler)
        if self.scaler is not None and (path / "scaler.pt").is_file():
            self.scaler.load_state_dict(torch.load(path / "scaler.pt", map_location="cpu", weights_only=True))
        set_rng_state(self.world.own_rng(rng, written_by))
        self.state = TrainerState(
            step=meta["step"],
            epoch=meta["epoch"],
            epoch_step=meta["epochStep"],
            tokens=meta["tokens"],
            epoch_loss_sum=meta["epochLossSum"],
            epoch_loss_tokens=meta["epochLossTokens"],
        )
        self.token_budget = min(self.token_budget, meta.get("microBatchTokens", self.token_budget))
        if meta.get("gradientCheckpointing") and not self.checkpointing and self.args.gradient_checkpointing is None:
            self.set_checkpointing(True)
        self.resumed = (self.state.epoch, self.state.epoch_step)
        self.start_step = self.state.step
        log(
            "info",
            f"resumed from step {self.state.step}: epoch {self.state.epoch}, "
            f"{self.state.epoch_step} of {self.per_epoch} batches done",
        )

    # -- steps

    def hidden_states(self, micro: Sequence[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's last hidden states of the right-padded micro-batch, and its labels."""
        ids, mask, labels = (t.to(self.device) for t in collate(micro, self.pad_id))
        return self.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state, labels

    def loss_sum(self, micro: Sequence[Encoded]) -> torch.Tensor:
        """The micro-batch's summed token loss, float32, on the device. The
        training method's loss (DPO's: dpo.DPOTrainer)."""
        with self.autocast():
            hidden, labels = self.hidden_states(micro)
            return labelled_loss_sum(hidden, labels, self.head)

    def metrics(self) -> dict[str, float]:
        """The method's metrics of the last step or evaluation, beside its
        loss: progress's and eval's `metrics`. Supervised training has none."""
        return {}

    def micro_batches(self, batch: Sequence[Encoded]) -> list[list[Encoded]]:
        """The batch longest first (little padding), cut into micro-batches of
        at most token_budget padded tokens and --micro-batch-size examples."""
        out: list[list[Encoded]] = []
        for e in sorted(batch, key=lambda e: -len(e.input_ids)):
            current = out[-1] if out else None
            if (
                current is None
                or (len(current) + 1) * len(current[0].input_ids) > self.token_budget
                or (self.micro_batch_size and len(current) >= self.micro_batch_size)
            ):
                out.append([e])
            else:
                current.append(e)
        return out

    def accumulate(self, batch: Sequence[Encoded], targets: int) -> torch.Tensor:
        """Forward and backward over the batch's micro-batches; the summed loss."""
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        # Of several processes, this one's slice of the batch, and passes that count zero (distributed.py).
        for micro, weight in self.world.micro_batches(self, batch):
            loss = self.loss_sum(micro)
            if weight != 1:
                loss = loss * weight
            # Divided by the whole batch's token count: the gradient is the
            # batch's mean token loss however it is split into micro-batches.
            scaled = loss / targets
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach()  # no .item() here: it would wait for the GPU each micro-batch
            del loss, scaled
        return total

    def shrink(self, batch: Sequence[Encoded], error: BaseException) -> None:
        """After running out of memory: smaller micro-batches, then gradient
        checkpointing (unless --no-gradient-checkpointing); else give up."""
        if self.world.size > 1:
            # The other processes are in the step's passes: no retry on this
            # one's own. The worker starts them all again with memoryRetry.
            raise error
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if any(len(m) > 1 for m in self.micro_batches(batch)):
            self.token_budget = max(1, self.token_budget // 2)
            log("warn", f"out of memory at step {self.state.step + 1}: micro-batches of at most {self.token_budget} tokens now")
        elif not self.checkpointing and self.args.gradient_checkpointing is None:
            self.set_checkpointing(True)
            log("warn", f"out of memory at step {self.state.step + 1} with one example a micro-batch: gradient checkpointing on")
        else:
            raise error

    def train_step(self, batch: list[Encoded]) -> tuple[float, int]:
        """One optimizer step over an effective batch, by gradient accumulation.
        Returns the mean token loss and the number of loss tokens. Out of
        memory, the step starts again with smaller micro-batches and the RNG
        as it was: the same gradient but for float rounding (without dropout
        exactly; LoRA dropout masks follow the micro-batches' shapes)."""
        targets = sum(e.targets for e in batch)
        # A retry draws the same dropout masks as the first try would have.
        rng = rng_state()
        while True:
            try:
                loss_sum = self.accumulate(batch, targets)
                break
            except torch.OutOfMemoryError as e:
                # Without its traceback: its frames hold the failed try's activations.
                error = e.with_traceback(None)
            self.optimizer.zero_grad(set_to_none=True)
            set_rng_state(rng)
            self.shrink(batch, error)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.world.all_sum(loss_sum).item() / targets, targets

    def evaluate(self) -> None:
        """Mean token loss over the validation set's assistant tokens, as an eval line.
        Abandoned if a stop comes meanwhile: the checkpoint matters more."""
        if not self.validation_set or self.evaluated_step == self.state.step:
            return
        self.model.eval()
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        targets, done, reported = 0, 0, time.monotonic()
        with torch.no_grad():
            for micro in self.micro_batches(self.validation_set):
                if self.stop.requested:
                    self.model.train()
                    return
                total += self.loss_sum(micro)
                targets += sum(e.targets for e in micro)
                done += len(micro)
                # A long evaluation says it is alive, or the worker takes it for a hang.
                if time.monotonic() - reported >= EVAL_PROGRESS_EVERY:
                    emit("evaluating", step=self.state.step, done=done, total=len(self.validation_set))
                    reported = time.monotonic()
        self.model.train()
        self.validation_loss = total.item() / targets
        self.evaluated_step = self.state.step
        metrics = self.metrics()
        emit("eval", step=self.state.step, validationLoss=self.validation_loss, **({"metrics": metrics} if metrics else {}))

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
            metrics = self.metrics()
            emit(
                "progress", step=s.step, epoch=epoch, loss=loss, learningRate=learning_rate, tokens=s.tokens,
                **({"metrics": metrics} if metrics else {}),
            )
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
        self.stop_if_requested()  # an evaluation a stop cut short
        self.checkpoint()

    def run(self) -> None:
        plan = plan_epochs(self.cfg.epoch_from, self.cfg.epoch_to, self.resumed, self.per_epoch)
        self.model.train()
        self.stop.loading = False
        for epoch, first_batch in plan:
            self.train_epoch(epoch, first_batch)
        # A resume from the end of epochs.to trains nothing; its result still needs these.
        self.evaluate()
        self.stop_if_requested()
        self.checkpoint()
        out = Path(self.cfg.output_dir) / "adapter"
        adapter = self.world.adapter_state(self.model)
        if self.world.speaks:
            self.model.save_pretrained(out, save_embedding_layers=False, state_dict=adapter)
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
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config()
    world = distributed.World.from_env(cfg.world_size)
    if cfg.init_adapter is not None:
        check_adapter(cfg.init_adapter, cfg.base_model, cfg.lora_rank)
    if cfg.method == "dpo":
        import dpo  # a loss and its data on top of this module's loop
    tiny: dict[str, Any] | None = None
    if not (Path(cfg.model_path) / "config.json").is_file():
        if not args.init_tiny:
            import fetch

            try:
                fetch.fetch(cfg.base_model, Path(cfg.model_path), log)
            except fetch.Refused as e:
                raise Untrainable(str(e)) from None
    if not (Path(cfg.model_path) / "config.json").is_file():
        tiny = tiny_fields(cfg.base_model, args.tiny_config)
        log(
            "info",
            f"no weights for {cfg.base_model} at {cfg.model_path}: training a tiny stand-in of its architecture "
            f"(--init-tiny); put the model's weights there to fine-tune the real model",
        )

    cuda = torch.cuda.is_available()
    device = world.device(cuda)
    world.start(device, cfg.qlora)
    stop = world.shared_stop(stop, device)
    dtype, scale_loss = choose_precision(cuda, cuda and torch.cuda.is_bf16_supported(including_emulation=False))

    # The data before the model: bad data fails in seconds, not after a long load.
    tokenizer = build_tiny_tokenizer(tiny) if tiny is not None else load_tokenizer(cfg.model_path)
    chat = chat_format(tokenizer)
    started = time.perf_counter()
    encode = dpo.encode_file if cfg.method == "dpo" else encode_file
    train_set = encode(cfg.training_file, chat, cfg.max_sequence_length, "training")
    if not train_set:
        raise Untrainable("no training example has an assistant token to train on")
    validation_set: list[Encoded] = []
    if cfg.validation_file is not None:
        validation_set = encode(cfg.validation_file, chat, cfg.max_sequence_length, "validation")
        if not validation_set:
            log("warn", "no validation example has an assistant token; there will be no validation loss")
    log(
        "info",
        f"encoded {len(train_set)} training and {len(validation_set)} validation examples "
        f"in {time.perf_counter() - started:.1f} s",
    )

    started = time.perf_counter()
    quantization = None
    if cfg.qlora:
        import quant  # bitsandbytes, only for QLoRA: importing it takes seconds

        quantization = quant.quantization_config(dtype)
    if tiny is not None:
        model = build_tiny_model(cfg.base_model, tiny, tokenizer)
        if cfg.qlora:  # from host memory, as real weights come: the unquantized model never takes the GPU's
            model = quant.quantize(model, dtype, device)
        else:
            model = model.to(device=world.load_device(device), dtype=dtype)
        source = "a tiny random model (--init-tiny)"
    else:
        model = (
            load_model(cfg.model_path, dtype, world.load_device(device), quantization)
            if world.loads_weights
            else distributed.empty_model(cfg.model_path, dtype)
        )
        source = cfg.model_path
    model.config.use_cache = False  # no generation here; the cache only costs memory
    if cfg.qlora:
        model = quant.prepare(model)
        total = quant.parameter_count(model)
        log("info", quant.describe(model))
    else:
        total = sum(p.numel() for p in model.parameters())
    # The job's seed fixes the adapter's initial weights (and dropout, until a resume restores the RNG).
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed % (1 << 63))
    model = add_lora(model, args, cfg)
    model = world.shard(model, device, dtype)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = model.peft_config["default"]
    log(
        "info",
        f"loaded {cfg.base_model} from {source}: {total / 1e6:.1f}M parameters, {dtype} on {device}{world.describe()}, "
        f"in {time.perf_counter() - started:.1f} s; LoRA r={lora.r} alpha={lora.lora_alpha}"
        f"{f' from initAdapter {cfg.init_adapter}' if cfg.init_adapter else ''}: "
        f"{trainable / 1e6:.2f}M trainable parameters",
    )

    method = dpo.DPOTrainer if cfg.method == "dpo" else Trainer
    trainer = method(cfg, args, stop, model, tokenizer, train_set, validation_set, device, dtype, scale_loss, world=world)
    if args.gradient_checkpointing:
        trainer.set_checkpointing(True)
    if cfg.memory_retry:
        trainer.use_less_memory(cfg.memory_retry)
    log(
        "info",
        f"{trainer.per_epoch} steps an epoch ({len(train_set)} examples, batchSize {cfg.batch_size} in "
        f"micro-batches of at most {trainer.micro_batch_size or 'any number of'} examples and {trainer.token_budget} tokens), "
        f"{trainer.total_steps} in all; "
        f"gradient checkpointing {'on' if trainer.checkpointing else 'off until memory needs it' if args.gradient_checkpointing is None else 'off'}",
    )
    try:
        if cfg.resume_from is not None:
            trainer.restore(Path(cfg.resume_from))
        trainer.run()
    finally:
        world.close()  # on a stop's exit too: NCCL warns of a process group left open


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
    p.add_argument("--micro-batch-tokens", type=positive_int, default=8192, metavar="N",
                   help="padded tokens per forward pass; gradients accumulate to batchSize, and out of "
                        "memory the step is retried with half as many (default: 8192)")
    p.add_argument("--micro-batch-size", type=positive_int, metavar="N",
                   help="at most N examples per forward pass (default: 1 on the CPU, where padding is pure "
                        "waste; on a GPU as many as --micro-batch-tokens allows)")
    p.add_argument("--lora-r", type=positive_int, default=16, metavar="N", help="LoRA rank (default: 16)")
    p.add_argument("--lora-alpha", type=positive_int, default=32, metavar="N", help="LoRA alpha (default: 32)")
    p.add_argument("--lora-dropout", type=float, default=0.05, metavar="P", help="LoRA dropout (default: 0.05)")
    p.add_argument("--eval-every", type=non_negative_int, metavar="N",
                   help="evaluate every N steps and at each epoch's end; 0: at epoch ends only "
                        "(default: 4 times an epoch)")
    p.add_argument("--checkpoint-every", type=non_negative_int, metavar="N",
                   help="checkpoint every N steps and at each epoch's end; 0: at epoch ends only "
                        "(default: 4 times an epoch)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations in the backward pass, to fit long sequences (default: off "
                        "until a step runs out of memory with one example a micro-batch)")
    p.add_argument("--init-tiny", action="store_true",
                   help="when modelPath has no weights, train a tiny random model of the base model's architecture")
    p.add_argument("--tiny-config", metavar="PATH",
                   help="a JSON object of model config fields over tiny/<baseModel>.json (a bigger tiny model)")
    p.add_argument("--write-tiny", metavar="DIR",
                   help="write every tiny model and its tokenizer to DIR/<baseModel>/ and exit")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads torch may use (default: torch's, one per core)")
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
    except torch.OutOfMemoryError as e:
        print(e, file=sys.stderr, flush=True)
        log(
            "error",
            "out of GPU memory: use a smaller batchSize (or --micro-batch-size), "
            "shorter examples, or a hardware pool with more GPU memory",
        )
        return EXIT_OOM
    return 0


if __name__ == "__main__":
    # dpo.py imports this module as train: let it find this one rather than
    # load a second copy (whose Untrainable main would not catch).
    sys.modules.setdefault("train", sys.modules[__name__])
    try:
        code = main()
    except SystemExit as e:  # a stop's exit
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    distributed.exit_process(code)
