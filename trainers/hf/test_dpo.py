"""Preference tuning (method dpo) and initAdapter: train.py trains the tiny
llama-3.1-8b for real, on the CPU, by the trainer protocol.

A supervised job first teaches the task (say the prompt's words back, in
either case at random); DPO jobs then start from its adapter (initAdapter)
on pairs whose preferred reply is in lowercase and whose non-preferred one is
the same words in uppercase. The DPO job reports its loss and rewards,
checkpoints, resumes a stopped epoch with the same metric points, and its
adapter, loaded onto the base as a server would, prefers the preferred reply
of held-out pairs more often than the adapter it started from. Two
processes (worldSize 2) train the same DPO job as one does.
"""

from __future__ import annotations

import json
import math
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

import dpo
import test_distributed as distributed
import train
from test_train import FLAGS, LOSS_TOLERANCE, Job, Run, finish, ok, write_jsonl

BASE = "llama-3.1-8b"
PAIRS, BATCH = 24, 4
STEPS = PAIRS // BATCH
BETA = 0.1
METRICS = {"rewardMargin", "rewardAccuracy", "chosenReward", "rejectedReward"}
# One thread a process: up to three run at once on a small CPU.
TFLAGS = (*FLAGS, "--threads", "1")


def phrase(rng: random.Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 6))) for _ in range(2))


def preference(rng: random.Random) -> dict[str, Any]:
    """A pair whose preference is learnable from letters alone: lowercase over uppercase."""
    words = phrase(rng)
    return {
        "input": {"messages": [{"role": "system", "content": "Answer in lowercase."},
                               {"role": "user", "content": f"Say {words}."}]},
        "preferred_output": [{"role": "assistant", "content": words}],
        "non_preferred_output": [{"role": "assistant", "content": words.upper()}],
    }


def chat(rng: random.Random) -> dict[str, Any]:
    """A supervised example of the task, its reply's case drawn at random: no preference to learn."""
    words = phrase(rng)
    reply = words if rng.random() < 0.5 else words.upper()
    return {"messages": [{"role": "user", "content": f"Say {words}."}, {"role": "assistant", "content": reply}]}


rng = random.Random(21)
SUPERVISED = [chat(rng) for _ in range(24)]
TRAINING = [preference(rng) for _ in range(PAIRS)]
VALIDATION = [preference(rng) for _ in range(8)]
HELD_OUT = [preference(rng) for _ in range(32)]  # seen by no job


def hyperparameters(learning_rate: float = 0.005) -> dict[str, Any]:
    return {"epochs": 1, "learningRate": learning_rate, "batchSize": BATCH, "warmupSteps": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The supervised job; then, from its adapter, the DPO job uninterrupted,
    the DPO job stopped after step 2, and a supervised job (both at once,
    one process a core); then the stopped one resumed."""
    root = tmp_path_factory.mktemp("dpo")
    sft_job = Job(root / "sft", trainingFile=write_jsonl(root / "chat.jsonl", SUPERVISED), validationFile=None,
                  hyperparameters=hyperparameters())
    sft = ok(sft_job.run("sft", flags=TFLAGS))
    adapter = sft.messages[-1]["outputPath"]
    dpo_job = Job(root / "dpo", trainingFile=write_jsonl(root / "pairs.jsonl", TRAINING),
                  validationFile=write_jsonl(root / "pairs-validation.jsonl", VALIDATION),
                  hyperparameters=hyperparameters(), method={"type": "dpo", "dpo": {"beta": BETA}},
                  initAdapter=adapter)
    again = Job(root / "again", trainingFile=sft_job.cfg["trainingFile"], validationFile=None,
                hyperparameters=hyperparameters(), method={"type": "supervised"}, initAdapter=adapter)
    with ThreadPoolExecutor() as pool:
        whole = pool.submit(finish, dpo_job.start("whole", flags=TFLAGS))
        # --step-delay keeps the epoch going while the SIGTERM travels.
        stopped = pool.submit(finish, dpo_job.start("stopped", flags=(*TFLAGS, "--step-delay", "0.5")), 2)
        supervised = pool.submit(finish, again.start("again", flags=TFLAGS))
        whole, stopped, supervised = ok(whole.result()), stopped.result(), ok(supervised.result())
    assert stopped.code == 143, stopped.stderr[-3000:]
    resumed = ok(dpo_job.run("resumed", resume_from=stopped.last_checkpoint()["path"], flags=TFLAGS))
    return {"sft": sft, "whole": whole, "stopped": stopped, "resumed": resumed, "supervised": supervised}


def test_dpo_trains_reports_rewards_and_checkpoints(runs: dict[str, Run]):
    whole = runs["whole"]
    progress = whole.of("progress")
    assert [p["step"] for p in progress] == list(range(1, STEPS + 1))
    for p in progress:
        assert set(p["metrics"]) == METRICS, p
        m = p["metrics"]
        assert m["rewardMargin"] == pytest.approx(m["chosenReward"] - m["rejectedReward"], abs=1e-6)
        assert 0 <= m["rewardAccuracy"] <= 1
    # Before the first step the policy is the reference (initAdapter's adapter):
    # no reward, and the loss is -log sigmoid(0).
    first = progress[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["metrics"]["rewardMargin"] == pytest.approx(0, abs=1e-5)
    # Then the margins grow, and the loss falls.
    assert progress[-1]["metrics"]["rewardMargin"] > 0.5
    assert progress[-1]["metrics"]["rewardAccuracy"] == 1
    assert progress[-1]["loss"] < 0.5 * math.log(2)

    evals = whole.of("eval")
    assert evals and all(set(e["metrics"]) == METRICS for e in evals)
    assert evals[-1]["step"] == STEPS and evals[-1]["validationLoss"] < math.log(2)
    result = whole.messages[-1]
    assert result["type"] == "result" and result["validationLoss"] == evals[-1]["validationLoss"]
    # Tokens count both replies' sequences.
    assert progress[-1]["tokens"] == result["tokens"] > 0
    assert any("reference log-probabilities of 32 pairs (initAdapter)" in m["message"] for m in whole.of("log"))

    checkpoint = Path(whole.last_checkpoint()["path"])
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert (state["step"], state["method"], state["beta"], state["numExamples"]) == (STEPS, "dpo", BETA, PAIRS)
    adapter = json.loads((Path(result["outputPath"]) / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == BASE and adapter["r"] == 16


def metric_points(run: Run) -> dict[tuple[str, int], dict[str, Any]]:
    points = {("progress", p["step"]): {"loss": p["loss"], "lr": p["learningRate"], "tokens": p["tokens"], **p["metrics"]}
              for p in run.of("progress")}
    points.update({("eval", e["step"]): {"loss": e["validationLoss"], **e["metrics"]} for e in run.of("eval")})
    return points


def test_a_stopped_dpo_epoch_resumes_with_the_same_metric_points(runs: dict[str, Run]):
    whole, stopped, resumed = runs["whole"], runs["stopped"], runs["resumed"]
    last = stopped.of("progress")[-1]["step"]
    assert 2 <= last < STEPS and stopped.last_checkpoint()["step"] == last
    assert [p["step"] for p in resumed.of("progress")] == list(range(last + 1, STEPS + 1))
    expected = metric_points(whole)
    got = {**metric_points(stopped), **metric_points(resumed)}
    # Every step's point, and every evaluation the uninterrupted run made after the stop.
    assert set(expected) <= set(got) | {("eval", s) for s in range(1, last + 1)}
    for key, point in got.items():
        assert key in expected, key
        assert point == pytest.approx(expected[key], abs=LOSS_TOLERANCE), key
    assert resumed.messages[-1]["trainingLoss"] == pytest.approx(whole.messages[-1]["trainingLoss"], abs=LOSS_TOLERANCE)


def log_prob(model: Any, chat: train.ChatFormat, messages: list[dict[str, Any]]) -> float:
    """The model's log-probability of the last reply's tokens after the rest,
    from its own forward pass (not the trainer's code)."""
    e = train.encode_example(messages, chat, 256)
    labels = torch.tensor(e.labels[1:])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1].float()
    keep = labels != train.IGNORE_INDEX
    return torch.log_softmax(logits, -1)[keep].gather(1, labels[keep][:, None]).sum().item()


def preference_rate(adapter: str, pairs: list[dict[str, Any]]) -> float:
    """How often the base model with the adapter, as a server loads it, gives
    the preferred reply a higher log-probability than the non-preferred one."""
    fields = train.tiny_fields(BASE, None)
    tokenizer = train.build_tiny_tokenizer(fields)
    chat = train.chat_format(tokenizer)
    model = PeftModel.from_pretrained(train.build_tiny_model(BASE, fields, tokenizer), adapter).eval()
    wins = 0
    for pair in pairs:
        prompt = pair["input"]["messages"]
        margin = (log_prob(model, chat, prompt + pair["preferred_output"])
                  - log_prob(model, chat, prompt + pair["non_preferred_output"]))
        wins += margin > 0
    return wins / len(pairs)


def test_after_dpo_the_adapter_prefers_the_preferred_replies_of_held_out_pairs(runs: dict[str, Run]):
    before = preference_rate(runs["sft"].messages[-1]["outputPath"], HELD_OUT)
    after = preference_rate(runs["whole"].messages[-1]["outputPath"], HELD_OUT)
    print(f"\nDPO on held-out pairs: the preferred reply is more likely in {before:.0%} of {len(HELD_OUT)} pairs "
          f"with the starting adapter, in {after:.0%} after DPO")
    assert after > before
    assert after >= 0.9


def test_two_processes_train_dpo_from_an_init_adapter_as_one(runs: dict[str, Run], tmp_path: Path):
    """DPO from an initAdapter with worldSize 2: each rank computes its own
    slice's reference log-probabilities and rewards, which distributed.py
    tallies over the ranks; the two train as one process does, to float
    rounding."""
    job = Job(tmp_path, trainingFile=write_jsonl(tmp_path / "pairs.jsonl", TRAINING),
              validationFile=write_jsonl(tmp_path / "pairs-validation.jsonl", VALIDATION),
              hyperparameters=hyperparameters(), method={"type": "dpo", "dpo": {"beta": BETA}},
              initAdapter=runs["sft"].messages[-1]["outputPath"])
    flags = (*TFLAGS, "--lora-dropout", "0")  # dropout draws from each process's own RNG
    worlds = [distributed.start(job, "one", 1, flags=flags), distributed.start(job, "two", 2, flags=flags)]
    one, two = (distributed.ok(distributed.finish(w)) for w in worlds)
    expected, got = metric_points(one), metric_points(two)
    assert got.keys() == expected.keys() and ("progress", STEPS) in got
    for key, point in expected.items():
        assert got[key] == pytest.approx(point, rel=1e-4, abs=1e-6), key
    assert any("reference log-probabilities of" in m["message"] and "(initAdapter)" in m["message"] for m in two.of("log"))


def test_a_supervised_job_starts_from_init_adapter(runs: dict[str, Run]):
    sft, again = runs["sft"], runs["supervised"]
    # The same data from the adapter that already learnt it: a lower loss from the first step.
    assert again.of("progress")[0]["loss"] < 0.8 * sft.of("progress")[0]["loss"]
    assert not any("metrics" in p for p in again.of("progress"))
    assert any("from initAdapter" in m["message"] for m in again.of("log"))
    state = json.loads((Path(again.last_checkpoint()["path"]) / "trainer_state.json").read_text())
    assert (state["method"], state["beta"]) == ("supervised", None)


# ----------------------------------------------------------------- exit 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"method": {"type": "ppo"}}, "method must be"),
        ({"method": {"type": "dpo", "dpo": {"beta": 0}}}, "method.dpo.beta must be greater than 0 and at most 10"),
        ({"initAdapter": "/nonexistent/adapter"}, "initAdapter /nonexistent/adapter is not a PEFT adapter directory"),
    ],
)
def test_a_bad_method_or_init_adapter_exits_2(tmp_path: Path, change: dict[str, Any], message: str):
    """Before anything loads (test_helpers.py has every check of config.json's method)."""
    run = Job(tmp_path, **change).run("w")
    assert run.code == 2, run.stderr[-2000:]
    assert run.messages[-1]["level"] == "error" and message in run.messages[-1]["message"]


def test_chat_data_for_dpo_exits_2_saying_so(tmp_path: Path):
    run = Job(tmp_path, method={"type": "dpo", "dpo": {"beta": BETA}}).run("w")
    assert run.code == 2, run.stderr[-2000:]
    error = run.messages[-1]["message"]
    assert run.messages[-1]["level"] == "error"
    assert error.startswith("train.jsonl line 1: this is chat data; DPO trains on preference data"), error


def test_bad_preference_lines_are_named_by_line(tmp_path: Path):
    good = json.dumps(TRAINING[0])
    cases = [
        ({**TRAINING[0], "preferred_output": "yes"}, 'preferred_output must be [{"role": "assistant"'),
        ({**TRAINING[0], "non_preferred_output": [{"role": "user", "content": "x"}]}, "non_preferred_output must be"),
        ({**TRAINING[0], "input": {"messages": []}}, "input must be"),
        ({**TRAINING[0], "input": {"messages": [{"role": "user"}]}}, "each message must be"),
        ([1, 2], "expected a preference object"),
    ]
    path = tmp_path / "pairs.jsonl"
    for bad, message in cases:
        path.write_text(f"{good}\n\n{json.dumps(bad)}\n")
        with pytest.raises(train.Untrainable, match=r"pairs\.jsonl line 3: ") as raised:
            train.read_jsonl(str(path), dpo.normalize_preference)
        assert message in str(raised.value)
    # And supervised training says what preference data is.
    with pytest.raises(ValueError, match="this is preference data"):
        train.normalize_example(TRAINING[0])


def test_only_the_outputs_are_labelled():
    tokenizer = train.build_tiny_tokenizer(train.tiny_fields(BASE, None))
    chat = train.chat_format(tokenizer)
    line = {
        "input": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                               {"role": "user", "content": "Bye?"}]},
        "preferred_output": [{"role": "assistant", "content": "bye"}],
        "non_preferred_output": [{"role": "assistant", "content": "NO"}],
    }
    pair = dpo.encode_preference(dpo.normalize_preference(line), chat, 256)
    for e, reply in ((pair.chosen, "bye"), (pair.rejected, "NO")):
        labelled = tokenizer.decode([t for t in e.labels if t != train.IGNORE_INDEX])
        assert labelled == f"{reply}</s>\n"  # the prompt's own assistant turn is context
        assert tokenizer.decode(e.input_ids).endswith(f"<|assistant|>\n{reply}</s>\n")
    assert pair.input_ids == pair.chosen.input_ids + pair.rejected.input_ids and pair.targets == 1
    # An output that maxSequenceLength leaves no room for: the pair is skipped, and says why.
    with pytest.raises(ValueError, match="its preferred output: it has no assistant token within maxSequenceLength"):
        dpo.encode_preference(dpo.normalize_preference(line), chat, 10)
