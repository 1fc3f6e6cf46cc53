"""End-to-end tests of train.py: real training of tiny random models
(--init-tiny) by the trainer protocol, in subprocesses as the worker runs it.

They need torch, transformers and peft (make venv builds .venv with them) and
run on the CPU in float32, where a resumed run must repeat an uninterrupted
one's losses. test_helpers.py tests the pure helpers with torch alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import pytest

for _module in ("torch", "transformers", "peft"):
    pytest.importorskip(
        _module, reason=f"training with train.py needs {_module}: make venv builds .venv with it"
    )

import torch  # noqa: E402

import train  # noqa: E402
from test_helpers import CONVERSATION  # noqa: E402
from train import IGNORE_INDEX  # noqa: E402

HERE = Path(__file__).resolve().parent
TRAIN_PY = HERE / "train.py"
EPOCH_STEPS = 10  # 40 examples, batchSize 4
FLAGS = ("--init-tiny", "--micro-batch-size", "2")  # 2 micro-batches a step: accumulation is exercised
LOSS_TOLERANCE = 1e-4


def example(i: int) -> dict[str, Any]:
    a, b = i % 7 + 1, i % 5 + 2
    if i % 4 == 3:
        return {"prompt": f"Add {a} and {b}.", "completion": f"{a} plus {b} is {a + b}."}
    return {
        "messages": [
            {"role": "system", "content": "You add numbers."},
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
        ]
    }


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


@dataclass
class Run:
    code: int
    messages: list[dict[str, Any]]
    stderr: str

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def losses(self) -> dict[int, float]:
        return {m["step"]: m["loss"] for m in self.of("progress")}

    def last_checkpoint(self) -> dict[str, Any]:
        return self.of("checkpoint")[-1]


class Job:
    """One job's data and settings; each run() is one trainer process."""

    def __init__(self, root: Path, **over: Any) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.cfg = {
            "protocol": 1,
            "jobId": "ftjob_test",
            "baseModel": "llama-3.1-8b",
            "modelPath": str(root / "no-weights" / "llama-3.1-8b"),
            "trainingFile": write_jsonl(root / "train.jsonl", [example(i) for i in range(40)]),
            "validationFile": write_jsonl(root / "validation.jsonl", [example(i) for i in range(100, 108)]),
            "hyperparameters": {"epochs": 2, "learningRate": 0.005, "batchSize": 4, "warmupSteps": 2},
            "maxSequenceLength": 256,
            "seed": 7,
            "epochs": {"from": 1, "to": 1},
            "resumeFrom": None,
            **over,
        }

    def start(self, name: str, epoch: int = 1, resume_from: str | None = None, flags: tuple[str, ...] = FLAGS,
              env: dict[str, str] | None = None) -> Started:
        """Starts one trainer process in a fresh work directory, as the worker does."""
        work = self.root / name
        (work / "checkpoints").mkdir(parents=True)
        (work / "output").mkdir()
        cfg = dict(
            self.cfg,
            epochs={"from": epoch, "to": epoch},
            resumeFrom=resume_from,
            checkpointDir=str(work / "checkpoints"),
            outputDir=str(work / "output"),
        )
        (work / "config.json").write_text(json.dumps(cfg))
        # The CPU in float32 everywhere: a resumed run must repeat an uninterrupted one's losses.
        env = dict(os.environ, TUNEFORGE_TRAINER_CONFIG=str(work / "config.json"), CUDA_VISIBLE_DEVICES="", **(env or {}))
        # stderr to a file: a pipe nobody reads could fill and block the trainer.
        stderr = open(work / "stderr.txt", "w+")
        proc = subprocess.Popen([sys.executable, str(TRAIN_PY), *flags], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
        return Started(proc, stderr)

    def run(self, name: str, epoch: int = 1, resume_from: str | None = None, flags: tuple[str, ...] = FLAGS,
            stop_at_step: int | None = None) -> Run:
        """Runs one trainer process; with stop_at_step, SIGTERMs it once it reports that step."""
        return finish(self.start(name, epoch, resume_from, flags), stop_at_step)


@dataclass
class Started:
    """A trainer process, its stderr going to a file."""

    proc: subprocess.Popen[str]
    stderr: IO[str]


def finish(started: Started, stop_at_step: int | None = None) -> Run:
    """Reads a started trainer's messages until it exits; with stop_at_step,
    SIGTERMs it once it reports that step."""
    proc = started.proc
    assert proc.stdout is not None
    messages = []
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        message = json.loads(line)
        messages.append(message)
        if stop_at_step is not None and message["type"] == "progress" and message["step"] == stop_at_step:
            proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=600)
    with started.stderr:
        started.stderr.seek(0)
        return Run(code, messages, started.stderr.read())


def ok(run: Run) -> Run:
    assert run.code == 0, f"exit {run.code}\n{run.stderr[-3000:]}\n{run.messages[-5:]}"
    return run


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    return Job(tmp_path_factory.mktemp("job"))


@pytest.fixture(scope="module")
def uninterrupted(job: Job) -> tuple[Run, Run]:
    """The job's two epochs, one process each, as the worker runs them."""
    first = ok(job.run("a1", epoch=1))
    second = ok(job.run("a2", epoch=2, resume_from=first.last_checkpoint()["path"]))
    return first, second


def test_an_epoch_speaks_the_protocol(uninterrupted: tuple[Run, Run]):
    first, second = uninterrupted
    progress = first.of("progress")
    assert [p["step"] for p in progress] == list(range(1, EPOCH_STEPS + 1))
    assert {p["epoch"] for p in progress} == {1}
    tokens = [p["tokens"] for p in progress]
    assert all(a < b for a, b in zip(tokens, tokens[1:]))
    # Warmup over 2 steps, then the cosine decay over both epochs' 20 steps.
    lrs = [p["learningRate"] for p in progress]
    assert lrs[:3] == pytest.approx([0.0025, 0.005, 0.005])
    assert lrs[-1] == pytest.approx(0.005 * train.lr_factor(EPOCH_STEPS, 2, 2 * EPOCH_STEPS))

    # About 4 evaluations and checkpoints an epoch, and both at its end.
    assert [e["step"] for e in first.of("eval")] == [3, 6, 9, 10]
    assert [c["step"] for c in first.of("checkpoint")] == [3, 6, 9, 10]
    # The epoch's end is a checkpoint, announced before the result.
    result = first.messages[-1]
    assert result["type"] == "result" and result["step"] == EPOCH_STEPS
    assert first.last_checkpoint()["step"] == EPOCH_STEPS and first.last_checkpoint()["epoch"] == 1
    assert first.messages.index(first.last_checkpoint()) < len(first.messages) - 1
    assert result["tokens"] == tokens[-1]
    assert result["validationLoss"] == first.of("eval")[-1]["validationLoss"]
    assert any("tokens/s" in m["message"] for m in first.of("log"))

    checkpoint = Path(first.last_checkpoint()["path"])
    assert checkpoint.name == f"step-{EPOCH_STEPS}"
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "optimizer.pt",
                 "scheduler.pt", "rng_state.pt", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["epochStep"], state["tokens"]) == (10, 1, 10, tokens[-1])

    output = Path(result["outputPath"])
    assert output == Path(first.last_checkpoint()["path"]).parent.parent / "output" / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (output / name).is_file(), name
    adapter = json.loads((output / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "llama-3.1-8b" and adapter["r"] == 16
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    # The next epoch's process goes on from the checkpoint.
    assert [p["step"] for p in second.of("progress")] == list(range(EPOCH_STEPS + 1, 2 * EPOCH_STEPS + 1))
    assert {p["epoch"] for p in second.of("progress")} == {2}
    assert second.of("progress")[0]["tokens"] > tokens[-1]
    assert any(m["message"].startswith(f"resumed from step {EPOCH_STEPS}") for m in second.of("log"))
    assert second.messages[-1]["type"] == "result" and second.last_checkpoint()["step"] == 2 * EPOCH_STEPS


def test_the_loss_decreases(uninterrupted: tuple[Run, Run]):
    first, second = uninterrupted
    start = sum(list(first.losses().values())[:3]) / 3
    end = sum(list(second.losses().values())[-3:]) / 3
    assert end < start
    assert second.messages[-1]["trainingLoss"] < first.messages[-1]["trainingLoss"]
    assert second.of("eval")[-1]["validationLoss"] < first.of("eval")[0]["validationLoss"]


def test_a_stopped_epoch_resumes_exactly(job: Job, uninterrupted: tuple[Run, Run]):
    first, second = uninterrupted
    # --step-delay keeps the epoch going while the SIGTERM travels.
    stopped = job.run("b1", epoch=1, flags=(*FLAGS, "--step-delay", "0.5"), stop_at_step=3)
    assert stopped.code == 143, stopped.stderr[-3000:]
    last = stopped.of("progress")[-1]["step"]
    assert 3 <= last < EPOCH_STEPS
    assert stopped.last_checkpoint()["step"] == last  # the stop's checkpoint covers the last step
    assert not stopped.of("result")
    assert any("stopped by SIGTERM" in m["message"] for m in stopped.of("log"))

    resumed = ok(job.run("b2", epoch=1, resume_from=stopped.last_checkpoint()["path"]))
    steps = [p["step"] for p in resumed.of("progress")]
    assert steps == list(range(last + 1, EPOCH_STEPS + 1))
    expected = first.losses()
    for step, loss in resumed.losses().items():
        assert loss == pytest.approx(expected[step], abs=LOSS_TOLERANCE), step
    by_step = {p["step"]: p for p in first.of("progress")}
    for p in resumed.of("progress"):
        assert p["tokens"] == by_step[p["step"]]["tokens"]
        assert p["learningRate"] == pytest.approx(by_step[p["step"]]["learningRate"])
    assert resumed.messages[-1]["trainingLoss"] == pytest.approx(first.messages[-1]["trainingLoss"], abs=LOSS_TOLERANCE)
    assert resumed.messages[-1]["validationLoss"] == pytest.approx(first.messages[-1]["validationLoss"], abs=LOSS_TOLERANCE)

    # And the next epoch, from the resumed run's end, matches too.
    after = ok(job.run("b3", epoch=2, resume_from=resumed.last_checkpoint()["path"]))
    expected = second.losses()
    assert list(after.losses()) == list(expected)
    for step, loss in after.losses().items():
        assert loss == pytest.approx(expected[step], abs=LOSS_TOLERANCE), step


def test_a_resume_from_the_epochs_end_only_reports_again(job: Job, uninterrupted: tuple[Run, Run]):
    first, _ = uninterrupted
    again = ok(job.run("c1", epoch=1, resume_from=first.last_checkpoint()["path"]))
    assert not again.of("progress")
    # A checkpoint of this attempt at the result's step, as the protocol asks.
    assert [c["step"] for c in again.of("checkpoint")] == [EPOCH_STEPS]
    result = again.messages[-1]
    assert result["type"] == "result" and result["step"] == EPOCH_STEPS
    assert result["trainingLoss"] == pytest.approx(first.messages[-1]["trainingLoss"])
    assert result["tokens"] == first.messages[-1]["tokens"]


def test_written_tiny_models_load_like_init_tiny(tmp_path: Path, written_models: Path, uninterrupted: tuple[Run, Run]):
    first, _ = uninterrupted
    models = written_models
    for name in ("llama-3.1-8b", "llama-3.1-70b", "mistral-7b-v0.3"):
        for file in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (models / name / file).is_file(), (name, file)

    # The same base weights: the same losses, without --init-tiny.
    loaded = Job(tmp_path / "job", modelPath=str(models / "llama-3.1-8b"))
    run = ok(loaded.run("d1", epoch=1, flags=("--micro-batch-size", "2")))
    assert not any("tiny random model" in m["message"] for m in run.of("log"))
    # Nothing in the adapter names this host's model path (PEFT's model card did).
    output = Path(run.messages[-1]["outputPath"])
    for file in output.iterdir():
        if file.suffix in (".md", ".json", ".jinja"):
            assert str(models) not in file.read_text(), file.name
    expected = first.losses()
    for step, loss in run.losses().items():
        assert loss == pytest.approx(expected[step], abs=LOSS_TOLERANCE), step


def test_untrainable_data_exits_2(tmp_path: Path):
    no_replies = [{"messages": [{"role": "user", "content": f"hello {i}"}]} for i in range(5)]
    job = Job(tmp_path, trainingFile=write_jsonl(tmp_path / "bad.jsonl", no_replies))
    run = job.run("e1", epoch=1)
    assert run.code == 2
    warnings = [m["message"] for m in run.of("log") if m["level"] == "warn"]
    assert len(warnings) == 6  # five examples, then the count
    assert run.messages[-1]["level"] == "error" and "no training example" in run.messages[-1]["message"]


def test_tiny_tokenizer_masks_all_but_assistant_tokens():
    tokenizer = train.build_tiny_tokenizer(train.tiny_fields("llama-3.1-8b", None))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Café?"},
        {"role": "assistant", "content": "Oui, café."},
    ]
    chat = train.chat_format(tokenizer)
    e = train.encode_example(messages, chat, 1024)
    assert tokenizer.decode(e.input_ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(e.input_ids) == (
        "<s><|system|>\nBe brief.</s>\n<|user|>\nHi there</s>\n<|assistant|>\nHello!</s>\n"
        "<|user|>\nCafé?</s>\n<|assistant|>\nOui, café.</s>\n"
    )
    # Labels are the input ids on the assistant spans, IGNORE_INDEX elsewhere.
    spans, current = [], []
    for token, label in zip(e.input_ids, e.labels):
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
                current = []
        else:
            assert label == token
            current.append(token)
    if current:
        spans.append(current)
    assert [tokenizer.decode(s) for s in spans] == ["Hello!</s>\n", "Oui, café.</s>\n"]
    # Every byte is a token, and the markers are single special tokens.
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") >= 256
    assert len(tokenizer("é", add_special_tokens=False)["input_ids"]) == 2

    # prompt/completion lines are [user, assistant] chats.
    pc = train.normalize_example({"prompt": "Hi there", "completion": "Hello!"})
    assert train.encode_example(pc, chat, 1024) == train.encode_example(messages[1:3], chat, 1024)
    # The template never sees a message's weight.
    weighted = [*messages[1:2], {"role": "assistant", "content": "Hello!", "weight": 1}]
    assert train.encode_example(weighted, chat, 1024) == train.encode_example(messages[1:3], chat, 1024)


def labelled_spans(tokenizer: Any, e: train.Encoded) -> list[str]:
    spans, current = [], []
    for token, label in zip(e.input_ids, e.labels):
        if label == IGNORE_INDEX:
            if current:
                spans.append(tokenizer.decode(current))
                current = []
        else:
            current.append(token)
    if current:
        spans.append(tokenizer.decode(current))
    return spans


# The catalog's families' published chat templates (testdata/*.jinja, copied
# from the models' tokenizer_config.json) with their special tokens.
FAMILIES = {
    "llama-3.1": ("llama-3.1-8b-instruct.jinja", "<|begin_of_text|>", "<|eot_id|>",
                  ["<|start_header_id|>", "<|end_header_id|>"]),
    "mistral-v0.3": ("mistral-7b-instruct-v0.3.jinja", "<s>", "</s>", ["[INST]", "[/INST]"]),
}


def family_tokenizer(family: str) -> Any:
    template, bos, eos, specials = FAMILIES[family]
    tokenizer = train.build_tiny_tokenizer(train.tiny_fields("llama-3.1-8b", None))
    tokenizer.add_special_tokens({"bos_token": bos, "eos_token": eos, "additional_special_tokens": specials})
    tokenizer.chat_template = (HERE / "testdata" / template).read_text()
    return tokenizer


def test_llama_31_template_labels_each_reply_and_its_end_of_turn():
    tokenizer = family_tokenizer("llama-3.1")
    e = train.encode_example(CONVERSATION, train.chat_format(tokenizer), 1024)
    assert tokenizer.decode(e.input_ids) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert labelled_spans(tokenizer, e) == ["A1<|eot_id|>", "A2<|eot_id|>"]


def test_mistral_v03_template_keeps_the_system_prompt_and_labels_only_the_reply():
    tokenizer = family_tokenizer("mistral-v0.3")
    e = train.encode_example(CONVERSATION, train.chat_format(tokenizer), 1024)
    text = tokenizer.decode(e.input_ids)
    # What serving renders for the last reply's prompt, then the reply: the
    # system prompt is in the last user turn (the whole conversation rendered
    # at once has none).
    assert text == "<s>[INST] Q1[/INST] A1</s>[INST] S\n\nQ2[/INST] A2</s>"
    assert text == tokenizer.apply_chat_template(CONVERSATION[:4], tokenize=False, add_generation_prompt=True) + " A2</s>"
    # No prompt token is labelled; the first reply, whose prompt had the
    # system prompt in Q1, is context.
    assert labelled_spans(tokenizer, e) == [" A2</s>"]
    # Without a system prompt every reply is labelled.
    e = train.encode_example(CONVERSATION[1:], train.chat_format(tokenizer), 1024)
    assert labelled_spans(tokenizer, e) == [" A1</s>", " A2</s>"]


def test_tiny_models_have_the_base_models_architecture(tmp_path: Path):
    for name, architecture in (("llama-3.1-8b", "LlamaForCausalLM"), ("llama-3.1-70b", "LlamaForCausalLM"),
                               ("mistral-7b-v0.3", "MistralForCausalLM")):
        fields = train.tiny_fields(name, None)
        tokenizer = train.build_tiny_tokenizer(fields)
        model = train.build_tiny_model(name, fields, tokenizer)
        assert type(model).__name__ == architecture
        assert model.config.vocab_size == len(tokenizer)
        again = train.build_tiny_model(name, fields, tokenizer)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))

    bigger = tmp_path / "bigger.json"
    bigger.write_text(json.dumps({"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3}))
    fields = train.tiny_fields("llama-3.1-8b", str(bigger))
    model = train.build_tiny_model("llama-3.1-8b", fields, train.build_tiny_tokenizer(fields))
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (128, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="throughput is measured on a GPU")
def test_throughput_of_a_few_hundred_million_parameters_on_the_gpu(tmp_path: Path):
    big = tmp_path / "300m.json"
    big.write_text(json.dumps({"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24,
                               "num_attention_heads": 16, "num_key_value_heads": 8}))
    long_examples = [
        {"prompt": f"Count from {i}." + " Please." * 50, "completion": " ".join(str(i + k) for k in range(150))}
        for i in range(128)
    ]
    root = tmp_path / "job"
    root.mkdir()
    cfg = {
        "protocol": 1, "jobId": "ftjob_gpu", "baseModel": "llama-3.1-8b", "modelPath": str(root / "none"),
        "trainingFile": write_jsonl(root / "train.jsonl", long_examples), "validationFile": None,
        "hyperparameters": {"epochs": 1, "learningRate": 0.0002, "batchSize": 16, "warmupSteps": 1},
        "maxSequenceLength": 2048, "seed": 1, "epochs": {"from": 1, "to": 1}, "resumeFrom": None,
        "checkpointDir": str(root / "checkpoints"), "outputDir": str(root / "output"),
    }
    (root / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ, TUNEFORGE_TRAINER_CONFIG=str(root / "config.json"))
    proc = subprocess.run([sys.executable, str(TRAIN_PY), "--init-tiny", "--tiny-config", str(big)],
                          env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [json.loads(line)["message"] for line in proc.stdout.splitlines() if '"type": "log"' in line]
    print("\n".join(logs))
    assert any("tokens/s" in line for line in logs)
    assert any("bfloat16" in line for line in logs) == torch.cuda.is_bf16_supported(including_emulation=False)


# ------------------------------------------------- a trainer in this process


def in_process_trainer(root: Path, *flags: str) -> train.Trainer:
    """A Trainer of the tiny llama-3.1-8b on 8 examples (batchSize 4), in
    this process, its adapter initialised from seed 7."""
    root.mkdir(parents=True, exist_ok=True)
    job = Job(root, trainingFile=write_jsonl(root / "t.jsonl", [example(i) for i in range(8)]))
    cfg = train.parse_config({**job.cfg, "checkpointDir": str(root / "c"), "outputDir": str(root / "o")})
    args = train.parse_args(["--init-tiny", *flags])
    fields = train.tiny_fields(cfg.base_model, None)
    tokenizer = train.build_tiny_tokenizer(fields)
    model = train.build_tiny_model(cfg.base_model, fields, tokenizer)
    torch.manual_seed(7)
    model = train.add_lora(model, args, cfg)
    data = train.encode_file(cfg.training_file, train.chat_format(tokenizer), cfg.max_sequence_length, "training")
    stop = SimpleNamespace(loading=False, requested=False)
    return train.Trainer(cfg, args, stop, model, tokenizer, data, [], torch.device("cpu"), torch.float32, False)


def adapter_weights(t: train.Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.params]


def test_micro_batches_are_longest_first_within_the_token_budget(tmp_path: Path):
    t = in_process_trainer(tmp_path, "--micro-batch-size", "8")
    batch = t.train_set[:4]
    longest = max(len(e.input_ids) for e in batch)
    t.token_budget = 2 * longest
    micro = t.micro_batches(batch)
    assert sorted(id(e) for m in micro for e in m) == sorted(id(e) for e in batch)
    lengths = [len(e.input_ids) for m in micro for e in m]
    assert lengths == sorted(lengths, reverse=True)
    assert all(len(m) * len(m[0].input_ids) <= t.token_budget for m in micro)
    t.token_budget = 1
    assert [len(m) for m in t.micro_batches(batch)] == [1, 1, 1, 1]
    # On the CPU an example a forward pass, unless told otherwise: no padding.
    assert in_process_trainer(tmp_path / "cpu").micro_batch_size == 1


def test_a_step_out_of_memory_is_retried_in_smaller_micro_batches_with_the_same_gradient(tmp_path: Path, capsys):
    whole = in_process_trainer(tmp_path / "a", "--lora-dropout", "0", "--micro-batch-size", "4")
    loss, _ = whole.train_step(whole.train_set[:4])
    expected = adapter_weights(whole)

    small = in_process_trainer(tmp_path / "b", "--lora-dropout", "0", "--micro-batch-size", "4")
    real = small.loss_sum

    def limited(micro):  # a GPU with room for one example at a time
        if len(micro) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(micro)

    small.loss_sum = limited
    capsys.readouterr()
    retried, _ = small.train_step(small.train_set[:4])
    assert retried == pytest.approx(loss, rel=1e-5)
    for a, b in zip(adapter_weights(small), expected):
        assert torch.allclose(a, b, atol=1e-6)
    warnings = [json.loads(line)["message"] for line in capsys.readouterr().out.splitlines()]
    assert warnings and all("out of memory at step 1: micro-batches of at most" in w for w in warnings)
    assert not small.checkpointing


def test_out_of_memory_with_one_example_turns_gradient_checkpointing_on_then_gives_up(tmp_path: Path):
    t = in_process_trainer(tmp_path)
    t.token_budget = 1
    calls = []

    def exhausted(micro):
        calls.append(t.checkpointing)
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    t.loss_sum = exhausted
    with pytest.raises(torch.OutOfMemoryError):
        t.train_step(t.train_set[:4])
    assert calls == [False, True]  # tried without, then with checkpointing
    # --no-gradient-checkpointing: no second try.
    t = in_process_trainer(tmp_path / "off", "--no-gradient-checkpointing")
    t.token_budget = 1
    t.loss_sum = exhausted
    calls.clear()
    with pytest.raises(torch.OutOfMemoryError):
        t.train_step(t.train_set[:4])
    assert calls == [False]


def test_a_memory_retry_starts_with_less_memory(tmp_path: Path, capsys):
    # A world's attempt after one (then two) that ran out of memory: halved
    # micro-batches each time, and gradient checkpointing.
    for retries, budget in ((1, 4096), (2, 2048)):
        t = in_process_trainer(tmp_path / str(retries))
        capsys.readouterr()
        t.use_less_memory(retries)
        assert (t.token_budget, t.checkpointing) == (budget, True)
        assert f"memory retry {retries}: an earlier attempt ran out of GPU memory" in capsys.readouterr().out
    t = in_process_trainer(tmp_path / "off", "--no-gradient-checkpointing")
    t.use_less_memory(1)
    assert (t.token_budget, t.checkpointing) == (4096, False)
    # The step still trains.
    loss, _ = t.train_step(t.train_set[:4])
    assert loss > 0


def test_micro_batches_never_wait_for_the_device(tmp_path: Path, monkeypatch):
    t = in_process_trainer(tmp_path, "--micro-batch-size", "1")
    inside, reads = [False], []
    item, accumulate = torch.Tensor.item, t.accumulate

    def counting(self):
        if inside[0]:
            reads.append(self)
        return item(self)

    def watched(*args):
        inside[0] = True
        try:
            return accumulate(*args)
        finally:
            inside[0] = False

    monkeypatch.setattr(torch.Tensor, "item", counting)
    t.accumulate = watched
    loss, _ = t.train_step(t.train_set[:4])  # four micro-batches, one .item() after them
    assert reads == [] and isinstance(loss, float)


def test_tiny_weights_are_the_same_on_every_host_and_release():
    fields = train.tiny_fields("llama-3.1-8b", None)
    model = train.build_tiny_model("llama-3.1-8b", fields, train.build_tiny_tokenizer(fields))
    weights = dict(model.named_parameters())
    # Fixed values: seeded_stream, not torch's or transformers' initialisation.
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    bound = fields["initializer_range"] * 3**0.5
    assert q.abs().max().item() <= bound
    assert q.std().item() == pytest.approx(fields["initializer_range"], rel=0.05)
    first = train.seeded_stream(zlib.crc32(b"llama-3.1-8b/model.layers.0.self_attn.q_proj.weight"), 1)
    assert q.flatten()[0].item() == pytest.approx(((int(first[0]) >> 11) * 2.0**-53 * 2 - 1) * bound, rel=1e-6)
    assert torch.equal(weights["model.norm.weight"], torch.ones_like(weights["model.norm.weight"]))


# ------------------------------------------------------------- exit 2


def test_an_unknown_architecture_exits_2(tmp_path: Path, written_models: Path):
    model = Path(shutil.copytree(written_models / "llama-3.1-8b", tmp_path / "m"))
    config = json.loads((model / "config.json").read_text())
    config["model_type"], config["architectures"] = "llama-next", ["LlamaNextForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    run = Job(tmp_path / "job", modelPath=str(model)).run("w", flags=())
    assert run.code == 2, run.stderr[-2000:]
    assert run.messages[-1]["level"] == "error" and "cannot load the model" in run.messages[-1]["message"]
    assert len(run.messages[-1]["message"]) < 600


def test_a_tokenizer_that_cannot_load_exits_2(tmp_path: Path, written_models: Path):
    model = Path(shutil.copytree(written_models / "llama-3.1-8b", tmp_path / "m"))
    (model / "tokenizer.json").write_text("{not json")
    run = Job(tmp_path / "job", modelPath=str(model)).run("w", flags=())
    assert run.code == 2, run.stderr[-2000:]
    assert "cannot load the tokenizer" in run.messages[-1]["message"]


@pytest.mark.parametrize("fields", [{"hidden_size": 30}, {"hidden_act": "nope"}, [1]])
def test_a_bad_tiny_config_exits_2(tmp_path: Path, fields: Any):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(fields))
    run = Job(tmp_path / "job").run("w", flags=("--init-tiny", "--tiny-config", str(bad)))
    assert run.code == 2, run.stderr[-2000:]
    assert run.messages[-1]["level"] == "error" and "config" in run.messages[-1]["message"]
