"""Training by several processes, one per GPU: trainer protocol 1.1's
worldSize > 1 (docs/trainer-protocol.md).

The worker starts worldSize processes of train.py with torchrun's
environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). They
meet through torch.distributed (NCCL on GPUs, gloo on the CPU) and train one
model sharded with FSDP2 (torch.distributed.fsdp.fully_shard): each decoder
layer is a unit, the decoder (embeddings, final norm) the root one, and the
LoRA adapter, added before sharding, is sharded with its layer. The output
head stays whole on every rank: it is frozen, so it needs neither gradients
nor optimizer state, and train.py calls it outside the decoder's forward
pass, where FSDP would not gather it.

Rank 0 alone reads the base weights (to host memory); the other ranks build
the model on the meta device, and the sharding hands each rank its part of
rank 0's weights. Each rank trains its slice of every global batch (rank r
takes examples r, r + N, ...), so batchSize stays the global batch; the
gradients are summed over the ranks and every loss is divided by the global
batch's target count, so a step's gradient and reported loss are the
batch's mean token loss, as in one process. FSDP needs every rank in every
forward and backward pass: a rank with fewer micro-batches than another
runs extra passes over an example of the batch whose loss counts zero.
Evaluation runs the whole validation set on every rank.

Rank 0 alone writes protocol messages and files. A checkpoint gathers the
adapter and its optimizer state whole to rank 0 (get_model_state_dict and
get_optimizer_state_dict with full_state_dict), which writes them in the
format of a one-process checkpoint, with every rank's RNG state; a resume
reads them on every rank (the checkpoint is a local directory of the host)
and each rank takes its shard. A SIGTERM reaches every rank; they agree at
each step boundary on whether any has one, so that all stop at the same
step and write one last checkpoint together.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterator, NoReturn, Sequence

import torch
import torch.distributed as dist

# Only rank 0 speaks the protocol: the others' messages would repeat its own.
SPEAKS = os.environ.get("RANK", "0") == "0"


def world_size() -> int:
    """How many processes train the attempt, as torchrun's WORLD_SIZE says (1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def exit_process(code: int) -> NoReturn:
    """Ends this process with code once train.py is done. A process of a
    world skips Python's finalization: gloo's worker thread frees its last
    collective's work (tensors with Python objects) after the wait for it
    returns, even after destroy_process_group, and if the interpreter is
    finalizing by then, that thread's wait for the GIL ends it by
    pthread_exit through C++ frames: std::terminate, SIGABRT ("terminate
    called without an active exception"), a crash to the worker of a run
    that went well. Every file and message is written by now."""
    if world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _untrainable(message: str) -> Exception:
    from train import Untrainable  # train imports this module

    return Untrainable(message)


class World:
    """The processes that train one attempt. A world of one (no RANK in the
    environment) trains as a single process: every method then leaves
    train.py's own way of doing things alone."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.mesh: Any = None

    @classmethod
    def from_env(cls, config_world_size: int) -> World:
        """The world torchrun's variables describe, checked against config.json's worldSize."""
        size = world_size()
        if size != config_world_size:
            raise _untrainable(
                f"config.json's worldSize is {config_world_size}, but this process is one of {size} "
                f"(WORLD_SIZE); the worker starts one process per GPU of the attempt"
            )
        return cls(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def speaks(self) -> bool:
        return self.rank == 0

    def device(self, cuda: bool) -> torch.device:
        """This process's device: its own GPU (LOCAL_RANK among the slot's) in a world."""
        if not cuda:
            return torch.device("cpu")
        if self.size > 1:
            if self.local_rank >= torch.cuda.device_count():
                raise _untrainable(
                    f"rank {self.rank} of {self.size} sees {torch.cuda.device_count()} GPU(s): "
                    "each process needs one of its own"
                )
            torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", torch.cuda.current_device())

    def start(self, device: torch.device, qlora: bool) -> None:
        """Joins the other processes (MASTER_ADDR, MASTER_PORT)."""
        if self.size == 1:
            return
        if qlora:
            # bitsandbytes' 4-bit weights do not shard with FSDP2 here.
            raise _untrainable(
                f"QLoRA trains on one GPU; this attempt has {self.size}: "
                "create the job on a single-GPU pool, or without qlora to shard the model"
            )
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        from torch.distributed.device_mesh import init_device_mesh

        self.mesh = init_device_mesh(device.type, (self.size,))

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def describe(self) -> str:
        """For the log line of the model's load."""
        if self.size == 1:
            return ""
        return f"; sharded over {self.size} processes (FSDP2: each decoder layer a unit)"

    # -- the model

    @property
    def loads_weights(self) -> bool:
        """Whether this process reads the base weights; the others build an empty model."""
        return self.rank == 0

    def load_device(self, device: torch.device) -> torch.device:
        """Where this process builds the model: rank 0 in host memory (its
        GPU takes only its shard), the others on the meta device (no memory)."""
        if self.size == 1:
            return device
        return torch.device("cpu") if self.rank == 0 else torch.device("meta")

    def shard(self, model: Any, device: torch.device, dtype: torch.dtype) -> Any:
        """Shards the model, its LoRA adapter added, over the world: every rank
        then holds its part of rank 0's weights on its device."""
        if self.size == 1:
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if dtype == torch.float16:
            raise _untrainable("sharding the model over several GPUs needs bfloat16 (an Ampere GPU or newer)")
        base = model.get_base_model()
        decoder = base.get_decoder()
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            raise _untrainable(f"{type(decoder).__name__} has no list of layers to shard over several GPUs")
        if base.get_output_embeddings().weight is base.get_input_embeddings().weight:
            # The head, whole on every rank, would lose the weight it shares with the sharded embeddings.
            raise _untrainable(f"{type(base).__name__} ties its output head to its embeddings, which this trainer does not shard")
        full = model.state_dict() if self.rank == 0 else {}
        # Buffers that no state dict holds (rotary embeddings' inv_freq) go the same way.
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()} if self.rank == 0 else {}
        # Gathered in the compute dtype, so that the float32 adapter and the
        # bf16 base weights of a layer gather as one; gradients sum in float32.
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for unit in (*layers, decoder):
            fully_shard(unit, mesh=self.mesh, mp_policy=mp)
            # Summed, not averaged: train.py divides each loss by the global
            # batch's targets. A plain sum, which gloo has too.
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
        model.to_empty(device=device)
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        with torch.no_grad():
            for name, b in model.named_buffers():
                if self.rank == 0:
                    b.copy_(buffers[name])
                dist.broadcast(b, src=0)
        return model

    # -- steps

    def shared_stop(self, stop: Any, device: torch.device) -> Any:
        """stop, or in a world one whose every rank stops when any is told to."""
        return stop if self.size == 1 else AgreedStop(stop, device)

    def micro_batches(self, trainer: Any, batch: Sequence[Any]) -> Iterator[tuple[list[Any], float]]:
        """This process's micro-batches of a global batch, each with the weight
        of its loss: its slice's, then passes that count zero until it has as
        many as the rank with the most (FSDP gathers each layer in every
        rank's pass at once). A trainer's tally of the step (dpo.py's
        rewards) counts the real passes of every rank."""
        if self.size == 1:
            for micro in trainer.micro_batches(batch):
                yield micro, 1.0
            return
        plans = [trainer.micro_batches(batch[r :: self.size]) for r in range(self.size)]
        mine = plans[self.rank]
        for micro in mine:
            yield micro, 1.0
        tally = getattr(trainer, "tally", None)
        for _ in range(max(len(p) for p in plans) - len(mine)):
            kept = tally.clone() if tally is not None else None
            yield [batch[0]], 0.0
            if kept is not None:
                tally.copy_(kept)
        if tally is not None:
            dist.all_reduce(tally)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """tensor summed over the world, in place."""
        if self.size > 1:
            dist.all_reduce(tensor)
        return tensor

    # -- checkpoints

    def trainable_names(self, model: Any) -> list[str]:
        """The adapter's parameter names in the optimizer's order."""
        return [name for name, p in model.named_parameters() if p.requires_grad]

    def full_state(self, model: Any, optimizer: Any, rng: dict[str, Any]) -> tuple[Any, Any, Any]:
        """What a checkpoint saves: the adapter's state dict (None: the
        model's own, save_pretrained finds it), the optimizer's and the RNG
        state. In a world each is gathered whole to rank 0, in the format of
        one process's (the optimizer's by parameter index), with every rank's
        RNG state under "ranks"; the other ranks get empty ones."""
        if self.size == 1:
            return None, optimizer.state_dict(), rng
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        adapter = self._gather_adapter(model)
        optim = get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        rngs: list[Any] | None = [None] * self.size if self.rank == 0 else None
        dist.gather_object(rng, rngs, dst=0)
        dist.barrier()  # see adapter_state
        if self.rank != 0:
            return {}, {}, {}
        index = {name: i for i, name in enumerate(self.trainable_names(model))}
        optim = {
            "state": {index[name]: state for name, state in optim["state"].items()},
            "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in optim["param_groups"]],
        }
        assert rngs is not None
        return adapter, optim, {**rngs[0], "ranks": rngs}

    def adapter_state(self, model: Any) -> Any:
        """The adapter's whole state dict on rank 0 (None in a world of one:
        save_pretrained reads the model's own)."""
        if self.size == 1:
            return None
        state = self._gather_adapter(model)
        # A rank is done with a gather once its part is on the way; the
        # barrier keeps it from exiting (this, or a stop's checkpoint, is
        # its last collective) before rank 0 has received everything.
        dist.barrier()
        return state

    def _gather_adapter(self, model: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        )

    def load_state(self, model: Any, optimizer: Any, weights: dict[str, torch.Tensor], optim: dict[str, Any]) -> list[str]:
        """Loads a checkpoint's adapter weights (as save_pretrained wrote
        them) and optimizer state (by parameter index) into the sharded
        model and its optimizer; returns the weights' keys the model lacks."""
        from peft import get_peft_model_state_dict
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        names = self.trainable_names(model)
        # How save_pretrained names each parameter: its values here are the indices.
        saved = get_peft_model_state_dict(
            model, state_dict={name: torch.tensor(i) for i, name in enumerate(names)}, save_embedding_layers=False
        )
        fqn = {key: names[int(i)] for key, i in saved.items()}
        unexpected = [key for key in weights if key not in fqn]
        full = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, {fqn[k]: v for k, v in weights.items() if k in fqn}, options=full)
        set_optimizer_state_dict(
            model,
            optimizer,
            optim_state_dict={
                "state": {names[i]: state for i, state in optim["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optim["param_groups"]],
            },
            options=full,
        )
        return unexpected

    def own_rng(self, rng: dict[str, Any], written_by: int) -> dict[str, Any]:
        """This rank's RNG state in a checkpoint's, written by written_by
        processes (rank 0's: a checkpoint of another world size)."""
        ranks = rng.get("ranks")
        if self.size == 1 or not ranks or written_by != self.size:
            return rng
        return ranks[self.rank]


class AgreedStop:
    """A StopSignal (train.py) whose `requested` is true on every rank once
    it is on any: each read is a collective operation (a maximum over the
    ranks), so train.py reads it only where every rank is, at the same step
    boundaries and evaluation batches."""

    def __init__(self, stop: Any, device: torch.device) -> None:
        self._stop = stop
        self._flag = torch.zeros(1, device=device)

    @property
    def loading(self) -> bool:
        return bool(self._stop.loading)

    @loading.setter
    def loading(self, value: bool) -> None:
        self._stop.loading = value

    @property
    def requested(self) -> bool:
        self._flag.fill_(1.0 if self._stop.requested else 0.0)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
        return bool(self._flag.item())


def empty_model(model_path: str, dtype: torch.dtype) -> Any:
    """The model of model_path's config on the meta device: no weights, no
    memory, until the sharding gives this rank its part of rank 0's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)

