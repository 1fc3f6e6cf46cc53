"""Training by two processes (trainer protocol 1.1's worldSize 2), started
as the worker starts them: one process group, torchrun's variables, gloo on
the CPU. distributed.py shards the tiny model with FSDP2.

A two-process run stopped mid-epoch by SIGTERM to its group and resumed
must repeat the uninterrupted two-process run's losses exactly: the same
processes do the same float32 operations in the same order on the CPU (each
rank's slice of each batch, its RNG state restored from the checkpoint, and
gloo's reductions of the same shards), so nothing is left to round
differently. Two processes must also train as one does, to float rounding:
the same global batches, gradients summed over the ranks in another order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

for _module in ("torch", "transformers", "peft"):
    pytest.importorskip(_module, reason=f"training with train.py needs {_module}")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from test_train import TRAIN_PY, Job, Run  # noqa: E402

STEPS = 8  # 40 examples, batchSize 5: slices of 3 and 2, so rank 1 makes up a pass each step
FLAGS = ("--init-tiny", "--threads", "1", "--eval-every", "0", "--checkpoint-every", "2")


@dataclass
class World:
    """The processes of one attempt, rank 0's stdout a pipe."""

    procs: list[subprocess.Popen[str]]
    work: Path

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_job(root: Path) -> Job:
    return Job(root, hyperparameters={"epochs": 1, "learningRate": 0.005, "batchSize": 5, "warmupSteps": 1})


def start(job: Job, name: str, size: int, resume_from: str | None = None, flags: tuple[str, ...] = FLAGS) -> World:
    """Starts size processes of train.py as the worker does (trainer/command's startRanks)."""
    work = job.root / name
    (work / "checkpoints").mkdir(parents=True)
    (work / "output").mkdir()
    cfg = dict(job.cfg, worldSize=size, resumeFrom=resume_from, epochs={"from": 1, "to": 1},
               checkpointDir=str(work / "checkpoints"), outputDir=str(work / "output"))
    (work / "config.json").write_text(json.dumps(cfg))
    port = str(free_port())
    procs: list[subprocess.Popen[str]] = []
    for rank in range(size):
        env = dict(os.environ, TUNEFORGE_TRAINER_CONFIG=str(work / "config.json"), CUDA_VISIBLE_DEVICES="")
        if size > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(
            [sys.executable, str(TRAIN_PY), *flags], cwd=work, env=env, text=True,
            stdout=subprocess.PIPE if rank == 0 else open(work / f"stdout.{rank}", "w"),
            stderr=open(work / f"stderr.{rank}", "w"),
            # One process group, rank 0 its leader, as the worker makes it.
            process_group=0 if rank == 0 else procs[0].pid,
        ))
    return World(procs, work)


def finish(world: World, stop_at_step: int | None = None) -> tuple[Run, list[int]]:
    """Reads rank 0's messages until every process exits; with stop_at_step,
    SIGTERMs the process group once rank 0 reports that step. Returns the
    run and each rank's exit code."""
    try:
        messages = []
        stdout = world.procs[0].stdout
        assert stdout is not None
        for line in stdout:
            if not line.startswith("{"):
                continue
            message = json.loads(line)
            messages.append(message)
            if stop_at_step is not None and message["type"] == "progress" and message["step"] == stop_at_step:
                os.killpg(world.procs[0].pid, signal.SIGTERM)
        codes = [p.wait(timeout=600) for p in world.procs]
    finally:
        world.kill()
    stderr = "\n".join(f"rank {r}: " + (world.work / f"stderr.{r}").read_text()[-2000:] for r in range(len(world.procs)))
    return Run(codes[0], messages, stderr), codes


def ok(run_codes: tuple[Run, list[int]]) -> Run:
    run, codes = run_codes
    assert codes == [0] * len(codes), f"exits {codes}\n{run.stderr}\n{run.messages[-5:]}"
    return run


def test_a_stopped_world_resumes_exactly(tmp_path: Path):
    job = new_job(tmp_path)
    whole = ok(finish(start(job, "whole", 2)))
    assert [p["step"] for p in whole.of("progress")] == list(range(1, STEPS + 1))
    # Rank 0 alone speaks.
    assert (job.root / "whole" / "stdout.1").read_text() == ""

    # The stop lands in step 3's delay: every rank stops at the same boundary.
    stopped, codes = finish(start(job, "stopped", 2, flags=(*FLAGS, "--step-delay", "1")), stop_at_step=3)
    assert codes == [143, 143], stopped.stderr
    last = stopped.last_checkpoint()
    assert 3 <= last["step"] < STEPS and stopped.messages[-1]["message"] == f"stopped by SIGTERM at step {last['step']}"

    checkpoint = Path(last["path"])
    # The format of one process's checkpoint, with every rank's RNG state.
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["worldSize"] == 2 and state["step"] == last["step"]
    rng = torch.load(checkpoint / "rng_state.pt", weights_only=False)
    assert len(rng["ranks"]) == 2 and torch.equal(rng["torch"], rng["ranks"][0]["torch"])
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert sorted(optimizer["state"]) == list(range(len(optimizer["state"]))) == optimizer["param_groups"][0]["params"]

    resumed = ok(finish(start(job, "resumed", 2, resume_from=str(checkpoint))))
    assert resumed.of("progress")[0]["step"] == last["step"] + 1
    got = {**stopped.losses(), **resumed.losses()}
    # Exact: see the module's docstring.
    assert got == whole.losses()
    assert resumed.messages[-1] == {**whole.messages[-1], "outputPath": resumed.messages[-1]["outputPath"]}
    assert resumed.of("eval") == whole.of("eval")
    whole_adapter = load_file(str(job.root / "whole" / "output" / "adapter" / "adapter_model.safetensors"))
    resumed_adapter = load_file(str(job.root / "resumed" / "output" / "adapter" / "adapter_model.safetensors"))
    assert whole_adapter.keys() == resumed_adapter.keys()
    assert all(torch.equal(whole_adapter[k], resumed_adapter[k]) for k in whole_adapter)


def test_two_processes_train_as_one(tmp_path: Path):
    job = new_job(tmp_path)
    flags = (*FLAGS, "--lora-dropout", "0")  # dropout draws from each process's own RNG
    worlds = [start(job, "one", 1, flags=flags), start(job, "two", 2, flags=flags)]
    one, two = (ok(finish(w)) for w in worlds)

    assert two.losses().keys() == one.losses().keys() == set(range(1, STEPS + 1))
    for step, loss in one.losses().items():
        assert two.losses()[step] == pytest.approx(loss, rel=1e-5), step
    assert two.of("eval")[-1]["validationLoss"] == pytest.approx(one.of("eval")[-1]["validationLoss"], rel=1e-5)
    assert [p["tokens"] for p in two.of("progress")] == [p["tokens"] for p in one.of("progress")]

    # The same checkpoint and output, but for float rounding.
    def saved(run: Run) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        path = Path(run.last_checkpoint()["path"])
        return load_file(str(path / "adapter" / "adapter_model.safetensors")), torch.load(path / "optimizer.pt", weights_only=True)

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        # Adam's steps amplify rounding where a gradient is about its eps: whole tensors compare.
        return bool((a - b).norm() <= 1e-4 * a.norm())

    (w1, o1), (w2, o2) = saved(one), saved(two)
    assert w1.keys() == w2.keys() and all(close(w1[k], w2[k]) for k in w1)
    assert o1["state"].keys() == o2["state"].keys()
    assert all(close(s["exp_avg"], o2["state"][i]["exp_avg"]) for i, s in o1["state"].items())
    assert o1["param_groups"] == o2["param_groups"]
