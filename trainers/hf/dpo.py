"""Preference tuning (DPO) for train.py: method {"type": "dpo"} in config.json.

The data is OpenAI's preference format, one pair a line:
{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", ...}],
 "non_preferred_output": [{"role": "assistant", ...}]}. Each output is encoded
after the prompt the way train.py encodes a chat's last reply, and only the
output's tokens are labelled.

The loss is DPO's (Rafailov et al. 2023): -log sigmoid(beta * ((pi_c - ref_c) -
(pi_r - ref_r))), where pi and ref are the summed log-probabilities of an
output's tokens under the policy being trained and under the reference, the
policy the job starts from. The reference log-probabilities are computed once
per process, before training and before a checkpoint is restored, with the
same weights in memory: the base model with the adapter disabled when the
adapter is fresh, or the adapter as initAdapter loaded it. No second copy of
the model, and no reference forward pass per step: a process computes one
reference pass over its data, the same work as a reference pass at each step
of an epoch. The computation is the same in every process of a job, so a
resumed run sees the same references as an uninterrupted one.

DPOTrainer is train.Trainer with that loss: the loop, batching, gradient
accumulation, checkpoints, resume and stop are the supervised trainer's.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

import train
from train import ChatFormat, Encoded, Message, log

REFERENCE_PROGRESS_EVERY = 30.0  # seconds between log lines of a long reference pass

PREFERENCE_SHAPE = (
    '{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": ...}], '
    '"non_preferred_output": [{"role": "assistant", "content": ...}]}'
)


@dataclass
class Pair:
    """A preference pair, encoded: the prompt with each output."""

    chosen: Encoded  # the preferred output
    rejected: Encoded  # the non-preferred one
    # The reference's summed log-probabilities of each output's tokens, set
    # by DPOTrainer before training.
    reference: tuple[float, float] | None = None

    # What train.Trainer's loop reads of an example. The loss is a mean over
    # pairs, so a pair is one target...
    targets = 1

    @property
    def input_ids(self) -> list[int]:
        """...and its tokens are both outputs' sequences: the tokens trained
        on, and what a micro-batch's token budget counts."""
        return self.chosen.input_ids + self.rejected.input_ids


# A preference line: the prompt, the preferred and the non-preferred reply.
Preference = tuple[list[Message], Message, Message]


def _output(obj: dict[str, Any], key: str) -> Message:
    value = obj.get(key)
    if not (
        isinstance(value, list)
        and len(value) == 1
        and isinstance(value[0], dict)
        and value[0].get("role") == "assistant"
        and isinstance(value[0].get("content"), str)
    ):
        raise ValueError(f'{key} must be [{{"role": "assistant", "content": string}}], not {value!r:.80}')
    return {"role": "assistant", "content": value[0]["content"]}


def normalize_preference(obj: Any) -> Preference:
    """A preference line as the prompt's messages and the two replies."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a preference object {PREFERENCE_SHAPE}")
    if "input" not in obj and ("messages" in obj or "prompt" in obj):
        raise ValueError(f"this is chat data; DPO trains on preference data, lines like {PREFERENCE_SHAPE}")
    prompt = obj.get("input")
    if not (isinstance(prompt, dict) and isinstance(prompt.get("messages"), list) and prompt["messages"]):
        raise ValueError('input must be {"messages": [...]} with at least one message')
    messages = train.normalize_example({"messages": prompt["messages"]})
    # The prompt's own assistant turns are context: only the outputs are trained on.
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in messages]
    return context, _output(obj, "preferred_output"), _output(obj, "non_preferred_output")


def encode_preference(preference: Preference, chat: ChatFormat, max_length: int) -> Pair:
    """Both replies after the prompt, as train.encode_example encodes a last
    reply; ValueError when either has no token within max_length."""
    context, chosen, rejected = preference
    encoded = []
    for name, reply in (("preferred", chosen), ("non-preferred", rejected)):
        try:
            encoded.append(train.encode_example([*context, reply], chat, max_length))
        except ValueError as e:
            raise ValueError(f"its {name} output: {e}") from None
    return Pair(*encoded)


def encode_file(path: str, chat: ChatFormat, max_length: int, what: str) -> list[Pair]:
    """Encodes a preference file, skipping (with warnings) pairs with nothing to train on."""
    return train.encode_file(path, chat, max_length, what, normalize=normalize_preference, encode=encode_preference)


class DPOTrainer(train.Trainer):
    """train.Trainer whose examples are Pairs and whose loss is DPO's; it
    reports the rewards (beta times the policy's log-probability gain over
    the reference) as metrics of each step and evaluation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta = self.cfg.beta
        # As TRL does by default: without dropout the policy's log-probabilities
        # equal the reference's until the first step changes the adapter, and
        # the rewards measure what training did, not dropout's noise.
        for module in self.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        # Summed over the micro-batches since the step or evaluation began:
        # chosen rewards, rejected rewards, pairs ranked right, pairs.
        self.tally = torch.zeros(4, dtype=torch.float32, device=self.device)
        self.compute_reference([*self.train_set, *self.validation_set])

    def compute_reference(self, pairs: Sequence[Pair]) -> None:
        """The reference's log-probabilities of every pair, from the weights
        as they are now: before any step, and before a restore."""
        started = reported = time.monotonic()
        # A fresh adapter changes nothing (its B is zero), so the reference is
        # the base model; initAdapter's adapter is the policy the job starts from.
        reference = self.model.disable_adapter() if self.cfg.init_adapter is None else contextlib.nullcontext()
        self.model.eval()
        done = 0
        with torch.no_grad(), reference:
            for micro in self.micro_batches(pairs):
                chosen, rejected = self.log_probs(micro)
                for pair, c, r in zip(micro, chosen.tolist(), rejected.tolist()):
                    pair.reference = (c, r)
                done += len(micro)
                # Before the first step any line is a sign of life to the worker's hang detection.
                if time.monotonic() - reported >= REFERENCE_PROGRESS_EVERY:
                    log("info", f"reference log-probabilities: {done} of {len(pairs)} pairs")
                    reported = time.monotonic()
        self.model.train()
        log(
            "info",
            f"reference log-probabilities of {len(pairs)} pairs "
            f"({'initAdapter' if self.cfg.init_adapter else 'the base model'}) "
            f"in {time.monotonic() - started:.1f} s; DPO beta {self.beta}",
        )

    def sequence_log_probs(self, sequences: Sequence[Encoded]) -> torch.Tensor:
        """Each sequence's summed log-probability of its labelled tokens, float32."""
        with self.autocast():
            hidden, labels = self.hidden_states(sequences)
            # Row by row: labelled_loss_sum sums over its whole input.
            return -torch.stack(
                [train.labelled_loss_sum(hidden[r : r + 1], labels[r : r + 1], self.head) for r in range(len(sequences))]
            )

    def log_probs(self, micro: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's summed log-probabilities of each pair's outputs. Two
        forward passes, the chosen sequences' and the rejected ones', each
        padded to its own longest: a micro-batch's token budget, which counts
        a pair's two sequences, bounds what they hold together."""
        return self.sequence_log_probs([p.chosen for p in micro]), self.sequence_log_probs([p.rejected for p in micro])

    def loss_sum(self, micro: Sequence[Pair]) -> torch.Tensor:
        """The micro-batch's summed DPO loss; its rewards go to the tally."""
        chosen, rejected = self.log_probs(micro)
        reference = torch.tensor([p.reference for p in micro], dtype=torch.float32, device=self.device)
        chosen_reward = self.beta * (chosen - reference[:, 0])
        rejected_reward = self.beta * (rejected - reference[:, 1])
        margin = chosen_reward - rejected_reward
        with torch.no_grad():
            self.tally += torch.stack(
                [chosen_reward.sum(), rejected_reward.sum(), (margin > 0).sum().float(), margin.new_tensor(len(micro))]
            )
        return -F.logsigmoid(margin).sum()

    def accumulate(self, batch: Sequence[Pair], targets: int) -> torch.Tensor:
        self.tally.zero_()  # a step retried after running out of memory counts once
        return super().accumulate(batch, targets)

    def evaluate(self) -> None:
        self.tally.zero_()
        super().evaluate()

    def metrics(self) -> dict[str, float]:
        """The rewards' means over the last step's or evaluation's pairs."""
        chosen, rejected, right, count = self.tally.tolist()
        if not count:
            return {}
        return {
            "rewardMargin": (chosen - rejected) / count,
            "rewardAccuracy": right / count,
            "chosenReward": chosen / count,
            "rejectedReward": rejected / count,
        }
