"""Tests of train.py that need torch but not transformers or peft: the pure
helpers (schedule, data order, config, masking) and the exits that come
before any model is loaded. test_train.py runs the real training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="train.py needs torch")

import train  # noqa: E402  (after the skip: train imports torch)
from train import IGNORE_INDEX, Encoded, Untrainable  # noqa: E402

HERE = Path(__file__).resolve().parent
CATALOG = {"llama-3.1-8b", "llama-3.1-70b", "mistral-7b-v0.3"}


def config(tmp_path: Path, **over: object) -> dict:
    cfg = {
        "protocol": 1,
        "jobId": "ftjob_test",
        "baseModel": "llama-3.1-8b",
        "modelPath": str(tmp_path / "models" / "llama-3.1-8b"),
        "trainingFile": str(tmp_path / "train.jsonl"),
        "validationFile": None,
        "hyperparameters": {"epochs": 2, "learningRate": 0.001, "batchSize": 4, "warmupSteps": 2},
        "maxSequenceLength": 256,
        "seed": 7,
        "epochs": {"from": 1, "to": 1},
        "resumeFrom": None,
        "checkpointDir": str(tmp_path / "checkpoints"),
        "outputDir": str(tmp_path / "output"),
    }
    cfg.update(over)
    return cfg


# ------------------------------------------------------------ schedule


def test_lr_factor_warms_up_then_decays_to_zero_after_the_last_step():
    warmup, total = 4, 20
    factors = [train.lr_factor(s, warmup, total) for s in range(1, total + 1)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0  # the first step after warmup is at the peak
    decay = factors[4:]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert 0 < factors[-1] < 0.02
    assert train.lr_factor(1, 0, 10) == 1.0
    # More warmup than steps: warmup only, never past 1.
    assert train.lr_factor(3, 10, 5) == pytest.approx(0.3)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a = train.epoch_order(40, 7, 1)
    assert sorted(a) == list(range(40))
    assert a == train.epoch_order(40, 7, 1)
    assert a != train.epoch_order(40, 7, 2)
    assert a != train.epoch_order(40, 8, 1)
    # A job's seed is an int64, possibly negative or huge.
    assert sorted(train.epoch_order(5, -(2**63), 1)) == list(range(5))
    assert sorted(train.epoch_order(5, 2**63 - 1, 3)) == list(range(5))
    # Fixed for good: no library's random numbers are involved, so every
    # host and release orders the data alike (torch.randperm's order changed
    # between releases).
    assert train.epoch_order(12, 7, 1) == [9, 5, 1, 7, 8, 10, 3, 11, 2, 6, 0, 4]


def test_seeded_stream_is_splitmix64():
    def splitmix64(state):
        mask = 2**64 - 1
        out = []
        for _ in range(4):
            state = (state + 0x9E3779B97F4A7C15) & mask
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
            out.append(z ^ (z >> 31))
        return out

    for seed in (0, 7, 2**64 - 1, -5):
        assert train.seeded_stream(seed, 4).tolist() == splitmix64(seed & (2**64 - 1))


def test_epoch_batches_cover_the_epoch_once():
    batches = train.epoch_batches(10, 4, 7, 1)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert len(batches) == train.steps_per_epoch(10, 4) == 3
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert train.steps_per_epoch(8, 4) == 2
    assert train.steps_per_epoch(1, 8) == 1


def test_default_every():
    assert train.default_every(None, 10) == 3
    assert train.default_every(None, 1) == 1
    assert train.default_every(0, 10) == 0
    assert train.default_every(5, 10) == 5


def test_plan_epochs():
    plan = train.plan_epochs
    assert plan(1, 1, None, 10) == [(1, 0)]
    assert plan(1, 3, None, 10) == [(1, 0), (2, 0), (3, 0)]
    assert plan(1, 1, (1, 3), 10) == [(1, 3)]  # mid-epoch: the next batch
    assert plan(2, 2, (1, 10), 10) == [(2, 0)]  # the end of the previous epoch
    assert plan(1, 3, (1, 4), 10) == [(1, 4), (2, 0), (3, 0)]
    assert plan(2, 2, (2, 10), 10) == []  # already done: only the result again
    with pytest.raises(Untrainable, match="no checkpoint"):
        plan(2, 2, None, 10)
    with pytest.raises(Untrainable, match="epoch 2, batch 1"):
        plan(3, 3, (1, 10), 10)  # epoch 2 is missing
    with pytest.raises(Untrainable, match="epoch 1, batch 4"):
        plan(2, 2, (1, 3), 10)  # epoch 1 is unfinished


# -------------------------------------------------------------- config


def test_parse_config_accepts_the_documented_config(tmp_path):
    cfg = train.parse_config(config(tmp_path, validationFile="v.jsonl", resumeFrom="/r/step-5"))
    assert cfg.batch_size == 4 and cfg.epochs == 2 and cfg.seed == 7
    assert cfg.validation_file == "v.jsonl" and cfg.resume_from == "/r/step-5"
    assert (cfg.epoch_from, cfg.epoch_to) == (1, 1)
    # An integral learning rate is still a number.
    raw = config(tmp_path)
    raw["hyperparameters"]["learningRate"] = 1
    assert train.parse_config(raw).learning_rate == 1.0


def test_parse_config_reads_the_method_and_init_adapter(tmp_path):
    # Absent (protocol 1.0): supervised from a fresh adapter.
    cfg = train.parse_config(config(tmp_path))
    assert (cfg.method, cfg.beta, cfg.init_adapter) == ("supervised", None, None)
    cfg = train.parse_config(config(tmp_path, method={"type": "supervised"}, initAdapter="/a/adapter"))
    assert (cfg.method, cfg.beta, cfg.init_adapter) == ("supervised", None, "/a/adapter")
    cfg = train.parse_config(config(tmp_path, method={"type": "dpo", "dpo": {"beta": 1}}, initAdapter=None))
    assert (cfg.method, cfg.beta, cfg.init_adapter) == ("dpo", 1.0, None)
    assert train.parse_config(config(tmp_path, method={"type": "dpo"})).beta == 0.1
    assert train.parse_config(config(tmp_path, method={"type": "dpo", "dpo": {"beta": 10}})).beta == 10


def test_lora_rank_comes_from_the_config(tmp_path):
    # Absent (a worker from before it): --lora-r's.
    assert train.parse_config(config(tmp_path)).lora_rank is None
    hp = {"epochs": 2, "learningRate": 0.001, "batchSize": 4, "warmupSteps": 2, "loraRank": 4}
    cfg = train.parse_config(config(tmp_path, hyperparameters=hp))
    assert cfg.lora_rank == 4
    args = train.parse_args([])
    fields = train.tiny_fields(cfg.base_model, None)
    model = train.add_lora(train.build_tiny_model(cfg.base_model, fields, train.build_tiny_tokenizer(fields)), args, cfg)
    lora = model.peft_config["default"]
    # alpha/r stays --lora-alpha/--lora-r's 32/16.
    assert (lora.r, lora.lora_alpha) == (4, 8)
    assert all(m.r["default"] == 4 for m in model.modules() if hasattr(m, "lora_A"))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"protocol": 2}, "protocol 2 is not supported"),
        ({"protocol": None}, "protocol None is not supported"),
        ({"seed": "7"}, "seed must be an integer"),
        ({"epochs": {"from": 2, "to": 3}}, r"epochs 2..3 are not within 1..2"),
        ({"epochs": {"from": 0, "to": 1}}, r"epochs 0..1"),
        ({"maxSequenceLength": 1}, "maxSequenceLength must be at least 2"),
        ({"trainingFile": None}, "trainingFile must be a string"),
        ({"hyperparameters": {"epochs": 2, "learningRate": 0.1, "batchSize": 0, "warmupSteps": 0}}, "batchSize"),
        ({"hyperparameters": {"epochs": 2, "batchSize": 4, "warmupSteps": 0}}, "learningRate must be a number"),
        ({"method": "dpo"}, 'method must be {"type": "supervised"} or {"type": "dpo"'),
        ({"method": {"type": "ppo"}}, "method must be"),
        ({"method": {"type": "dpo", "dpo": 0.1}}, "method.dpo must be an object"),
        ({"method": {"type": "dpo", "dpo": {"beta": "auto"}}}, "method.dpo.beta must be a number, not 'auto'"),
        ({"method": {"type": "dpo", "dpo": {"beta": 0}}}, "beta must be greater than 0 and at most 10, not 0"),
        ({"method": {"type": "dpo", "dpo": {"beta": 10.5}}}, "beta must be greater than 0 and at most 10"),
        ({"method": {"type": "dpo", "dpo": {"beta": float("nan")}}}, "beta must be greater than 0"),
        ({"initAdapter": 5}, "initAdapter must be a string"),
        ({"memoryRetry": -1}, "memoryRetry must not be negative"),
        ({"hyperparameters": {"epochs": 2, "learningRate": 0.1, "batchSize": 4, "warmupSteps": 0, "loraRank": 0}},
         "hyperparameters.loraRank must be at least 1"),
        ({"hyperparameters": {"epochs": 2, "learningRate": 0.1, "batchSize": 4, "warmupSteps": 0, "loraRank": "8"}},
         "hyperparameters.loraRank must be an integer"),
    ],
)
def test_parse_config_rejects(tmp_path, change, message):
    with pytest.raises(Untrainable, match=message):
        train.parse_config(config(tmp_path, **change))


def test_check_adapter(tmp_path):
    adapter = tmp_path / "adapter"
    with pytest.raises(Untrainable, match="is not a PEFT adapter directory"):
        train.check_adapter(str(adapter), "llama-3.1-8b")
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "llama-3.1-8b", "r": 8}))
    train.check_adapter(str(adapter), "llama-3.1-8b")
    train.check_adapter(str(adapter), "llama-3.1-8b", 8)
    with pytest.raises(Untrainable, match="has LoRA rank 8, and hyperparameters.loraRank is 16"):
        train.check_adapter(str(adapter), "llama-3.1-8b", 16)
    with pytest.raises(Untrainable, match="trained on 'llama-3.1-8b', not mistral-7b-v0.3"):
        train.check_adapter(str(adapter), "mistral-7b-v0.3")
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "base_model_name_or_path": "llama-3.1-8b"}))
    with pytest.raises(Untrainable, match="is not a LoRA adapter"):
        train.check_adapter(str(adapter), "llama-3.1-8b")


# ---------------------------------------------------------------- data


def test_normalize_example():
    chat = {"messages": [{"role": "user", "content": "hi", "name": "x"}, {"role": "assistant", "content": "yo"}]}
    assert train.normalize_example(chat) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    assert train.normalize_example({"prompt": "2+2?", "completion": "4"}) == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    for bad in ({"messages": [{"role": "user"}]}, {"prompt": "only"}, [], {"text": "x"}):
        with pytest.raises(ValueError):
            train.normalize_example(bad)


def test_read_jsonl_skips_blank_lines_and_names_a_bad_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n  \n{"prompt": "c", "completion": "d"}\n')
    assert len(train.read_jsonl(str(path))) == 2
    path.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    with pytest.raises(Untrainable, match="d.jsonl line 2"):
        train.read_jsonl(str(path))
    with pytest.raises(Untrainable, match="cannot read"):
        train.read_jsonl(str(tmp_path / "missing.jsonl"))


def chars(text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """A fake tokenizer: one token per character."""
    return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]


def char_format(system_in_last_user: bool = False) -> train.ChatFormat:
    """A fake chat template: "^" then "<role>content$" per message,
    "<assistant>" as generation prompt. With system_in_last_user it moves the
    system prompt into the user message that is the conversation's last
    message, as Mistral v0.3's does (Jinja's loop.last): so a whole
    conversation, which ends with a reply, shows no system prompt at all."""

    def render(messages, add_generation_prompt):
        text = "^"
        system = [m["content"] for m in messages if m["role"] == "system"]
        for i, m in enumerate(messages):
            if system_in_last_user and m["role"] == "system":
                continue
            content = m["content"]
            if system_in_last_user and i == len(messages) - 1 and m["role"] == "user" and system:
                content = system[0] + " " + content
            text += f"<{m['role']}>{content}$"
        if add_generation_prompt:
            text += "<assistant>"
        return text

    return train.ChatFormat(render, chars)


def labelled_text(e: Encoded) -> str:
    return "".join(chr(t) if t != IGNORE_INDEX else "_" for t in e.labels)


CONVERSATION = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "A2"},
]


def test_encode_example_labels_only_assistant_tokens():
    e = train.encode_example(CONVERSATION, char_format(), 1000)
    text = "".join(map(chr, e.input_ids))
    assert text == "^<system>S$<user>Q1$<assistant>A1$<user>Q2$<assistant>A2$"
    labelled = labelled_text(e)
    assert len(labelled) == len(text)
    # Each reply and its end marker, nothing else.
    assert labelled.replace("_", " ").split() == ["A1$", "A2$"]
    assert text[labelled.index("A1$") - len("<assistant>") : labelled.index("A1$")] == "<assistant>"
    assert e.targets == 6


def test_encode_example_truncates_and_skips_examples_without_targets():
    messages = [{"role": "user", "content": "Q" * 20}, {"role": "assistant", "content": "A" * 10}]
    full = train.encode_example(messages, char_format(), 1000)
    cut = train.encode_example(messages, char_format(), len(full.input_ids) - 5)
    assert cut.input_ids == full.input_ids[:-5] and cut.labels == full.labels[:-5]
    assert cut.targets == full.targets - 5
    with pytest.raises(ValueError, match="within maxSequenceLength"):
        train.encode_example(messages, char_format(), 20)
    with pytest.raises(ValueError, match="no assistant reply"):
        train.encode_example([{"role": "user", "content": "hi"}], char_format(), 100)
    # An opening assistant message has no prompt: it is not trained on.
    opening = [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="no assistant reply"):
        train.encode_example(opening, char_format(), 100)


def test_encode_example_renders_the_last_reply_as_serving_does_when_the_template_moves_the_system_prompt():
    e = train.encode_example(CONVERSATION, char_format(system_in_last_user=True), 1000)
    # Serving renders [system, user, assistant, user] with the generation
    # prompt: the system prompt is in the last user turn. The whole
    # conversation rendered at once would have lost it.
    assert "".join(map(chr, e.input_ids)) == "^<user>Q1$<assistant>A1$<user>S Q2$<assistant>A2$"
    # Only the reply is labelled, never the prompt; the first exchange,
    # rendered alone, puts S into Q1: its place in the whole is unknown.
    assert labelled_text(e).replace("_", " ").split() == ["A2$"]


def test_encode_example_honours_weight_zero():
    weighted = [dict(m) for m in CONVERSATION]
    weighted[2]["weight"] = 0
    e = train.encode_example(weighted, char_format(), 1000)
    assert labelled_text(e).replace("_", " ").split() == ["A2$"]
    weighted[4]["weight"] = 0
    with pytest.raises(ValueError, match="weight 0"):
        train.encode_example(weighted, char_format(), 1000)


def test_normalize_example_reads_weights():
    line = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
    assert train.normalize_example(line)[1] == {"role": "assistant", "content": "a", "weight": 0}
    line["messages"][1]["weight"] = 0.5
    with pytest.raises(ValueError, match="weight must be 0 or 1"):
        train.normalize_example(line)


def test_encode_example_starts_a_span_early_when_a_token_merges_across_the_boundary():
    def merging(text):
        # Pretend ">A" tokenizes as one token (1000).
        ids, offsets, i = [], [], 0
        while i < len(text):
            if text[i : i + 2] == ">A":
                ids.append(1000)
                offsets.append((i, i + 2))
                i += 2
            else:
                ids.append(ord(text[i]))
                offsets.append((i, i + 1))
                i += 1
        return ids, offsets

    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    e = train.encode_example(messages, train.ChatFormat(char_format().render, merging), 100)
    labelled = [t for t in e.labels if t != IGNORE_INDEX]
    assert labelled == [1000, ord("$")]


def test_collate_pads_right():
    batch = [Encoded([1, 2, 3], [IGNORE_INDEX, 2, 3]), Encoded([4], [IGNORE_INDEX])]
    ids, mask, labels = train.collate(batch, pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert labels.tolist() == [[IGNORE_INDEX, 2, 3], [IGNORE_INDEX] * 3]


class CountingHead(torch.nn.Linear):
    """An output layer that records how many positions it computed logits for."""

    def __init__(self, hidden: int, vocab: int) -> None:
        super().__init__(hidden, vocab, bias=False)
        self.rows: list[int] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return super().forward(x)


def test_labelled_loss_sum_computes_logits_of_labelled_positions_only_in_chunks():
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 8, requires_grad=True)
    head = CountingHead(8, 11)
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 2], labels[0, 3], labels[0, 5], labels[1, 4] = 1, 3, 7, 10
    # The full computation: every position's logits, the labelled ones summed.
    logp = head(hidden).log_softmax(-1)
    expected = -(logp[0, 1, 1] + logp[0, 2, 3] + logp[0, 4, 7] + logp[1, 3, 10])
    expected.backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    head.rows.clear()

    total = train.labelled_loss_sum(hidden, labels, head, chunk=3)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert head.rows == [3, 1]  # 4 labelled positions, chunks of 3: never all 12
    total.backward()
    assert torch.allclose(hidden.grad, grad, atol=1e-6)
    # Each chunk's logits are recomputed in the backward pass, not kept.
    assert sorted(head.rows[2:]) == [1, 3]


def test_choose_precision():
    assert train.choose_precision(False, False) == (torch.float32, False)
    assert train.choose_precision(True, True) == (torch.bfloat16, False)
    # A GPU that would emulate bf16: fp16 with loss scaling.
    assert train.choose_precision(True, False) == (torch.float16, True)


def test_trainer_state_epoch_loss():
    assert train.TrainerState().epoch_loss() is None
    assert train.TrainerState(epoch_loss_sum=6.0, epoch_loss_tokens=4).epoch_loss() == 1.5


# ------------------------------------------------------------ tiny models


def test_byte_alphabet_is_gpt2s():
    chars = train.byte_alphabet()
    assert len(set(chars)) == 256
    assert chars[ord("A")] == "A" and chars[ord("~")] == "~"
    assert chars[ord(" ")] == "Ġ" and chars[ord("\n")] == "Ċ"  # GPT-2's well-known stand-ins


def test_tiny_configs_cover_the_catalog():
    configs = {p.stem: json.loads(p.read_text()) for p in (HERE / "tiny").glob("*.json")}
    assert set(configs) == CATALOG
    for name, fields in configs.items():
        assert fields["model_type"] in ("llama", "mistral"), name
        assert fields["architectures"] == [fields["model_type"].capitalize() + "ForCausalLM"], name
        assert fields["hidden_size"] % fields["num_attention_heads"] == 0, name
        assert fields["num_attention_heads"] % fields["num_key_value_heads"] == 0, name
        assert "vocab_size" not in fields, name  # it is the tokenizer's
    assert configs["mistral-7b-v0.3"]["model_type"] == "mistral"


def test_tiny_fields_merges_overrides(tmp_path):
    over = tmp_path / "big.json"
    over.write_text(json.dumps({"hidden_size": 1024, "num_hidden_layers": 24}))
    fields = train.tiny_fields("llama-3.1-8b", str(over))
    assert fields["hidden_size"] == 1024 and fields["num_hidden_layers"] == 24
    assert fields["model_type"] == "llama"
    with pytest.raises(Untrainable, match="no tiny model config for gpt-9"):
        train.tiny_fields("gpt-9", None)


# ------------------------------------------------ exits before any model


def run_trainer(tmp_path: Path, cfg: dict, *flags: str) -> tuple[int, list[dict]]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, TUNEFORGE_TRAINER_CONFIG=str(path))
    proc = subprocess.run(
        [sys.executable, str(HERE / "train.py"), *flags],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_protocol_other_than_1_exits_2(tmp_path):
    code, messages = run_trainer(tmp_path, config(tmp_path, protocol=2), "--init-tiny")
    assert code == 2
    assert messages[-1]["type"] == "log" and messages[-1]["level"] == "error"
    assert "protocol 2 is not supported" in messages[-1]["message"]


def test_missing_weights_without_init_tiny_exits_2(tmp_path):
    (tmp_path / "models" / "llama-3.1-8b").mkdir(parents=True)
    code, messages = run_trainer(tmp_path, config(tmp_path))
    assert code == 2
    error = messages[-1]
    assert error["type"] == "log" and error["level"] == "error"
    assert str(tmp_path / "models" / "llama-3.1-8b") in error["message"] and "--init-tiny" in error["message"]


def test_unknown_flag_exits_2(tmp_path):
    code, _ = run_trainer(tmp_path, config(tmp_path), "--no-such-flag")
    assert code == 2


def test_emit_writes_one_json_line(capsys):
    train.emit("progress", step=1, epoch=1, loss=0.5, learningRate=1e-4, tokens=10)
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1
    assert json.loads(out) == {"type": "progress", "step": 1, "epoch": 1, "loss": 0.5, "learningRate": 1e-4, "tokens": 10}


def test_deterministic_load_errors():
    assert train.deterministic(ValueError("unknown architecture"))
    assert train.deterministic(FileNotFoundError("no tokenizer.json"))
    assert train.deterministic(Exception("data did not match any variant"))  # what tokenizers raises
    for transient in (MemoryError(), torch.OutOfMemoryError("CUDA out of memory"), OSError(5, "I/O error"),
                      RuntimeError("CUDA error: unspecified launch failure")):
        assert not train.deterministic(transient), transient


def test_encode_example_labels_a_zero_width_token_at_a_replys_start():
    def metaspace(text):
        # A "▁" token of no width where a reply begins, as Metaspace tokenizers make.
        ids, offsets = chars(text)
        at = text.index("A")
        return ids[:at] + [9601] + ids[at:], offsets[:at] + [(at, at)] + offsets[at:]

    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    e = train.encode_example(messages, train.ChatFormat(char_format().render, metaspace), 100)
    assert [t for t in e.labels if t != IGNORE_INDEX] == [9601, ord("A"), ord("$")]
