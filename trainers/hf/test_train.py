"""End-to-end tests of train.py: real training of tiny random models
(--init-tiny) by the trainer protocol, in subprocesses as the worker runs it.

They need torch, transformers and peft (pip install -r requirements.txt) and
run on the CPU in float32, where a resumed run must repeat an uninterrupted
one's losses. test_helpers.py tests the pure helpers with torch alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

for _module in ("torch", "transformers", "peft"):
    pytest.importorskip(
        _module, reason=f"training with train.py needs {_module}: pip install -r trainers/hf/requirements.txt"
    )

import torch  # noqa: E402

import train  # noqa: E402
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

    def run(self, name: str, epoch: int, resume_from: str | None = None, flags: tuple[str, ...] = FLAGS,
            stop_at_step: int | None = None) -> Run:
        """Runs one trainer process in a fresh work directory, as the worker
        does; with stop_at_step, SIGTERMs it once it reports that step."""
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
        env = dict(os.environ, TUNEFORGE_TRAINER_CONFIG=str(work / "config.json"), CUDA_VISIBLE_DEVICES="")
        # stderr to a file: a pipe nobody reads could fill and block the trainer.
        with open(work / "stderr.txt", "w+") as stderr:
            proc = subprocess.Popen([sys.executable, str(TRAIN_PY), *flags], cwd=work, env=env,
                                    stdout=subprocess.PIPE, stderr=stderr, text=True)
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
            stderr.seek(0)
            return Run(code, messages, stderr.read())


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


def test_written_tiny_models_load_like_init_tiny(tmp_path: Path, job: Job, uninterrupted: tuple[Run, Run]):
    first, _ = uninterrupted
    models = tmp_path / "models"
    written = subprocess.run([sys.executable, str(TRAIN_PY), "--write-tiny", str(models)],
                             capture_output=True, text=True, timeout=600)
    assert written.returncode == 0, written.stderr[-3000:]
    for name in ("llama-3.1-8b", "llama-3.1-70b", "mistral-7b-v0.3"):
        for file in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (models / name / file).is_file(), (name, file)

    # The same base weights: the same losses, without --init-tiny.
    loaded = Job(tmp_path / "job", modelPath=str(models / "llama-3.1-8b"))
    run = ok(loaded.run("d1", epoch=1, flags=("--micro-batch-size", "2")))
    assert not any("tiny random model" in m["message"] for m in run.of("log"))
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
    render = train.chat_renderer(tokenizer)
    e = train.encode_example(messages, render, 1024)
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
    assert train.encode_example(pc, render, 1024) == train.encode_example(messages[1:3], render, 1024)


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
    assert any("bfloat16" in line for line in logs) == torch.cuda.is_bf16_supported()
