"""QLoRA (hyperparameters.qlora): train.py trains a LoRA adapter over a 4-bit
NF4 base with bitsandbytes, for real, on the CPU. The base's linear weights
are 4-bit, take a quarter of bf16's bytes, compute as QLoRA says (dequantize
to bf16, multiply); a stopped epoch resumes with the same metric points; the
adapter loads onto the full-precision base with PEFT and helps it there.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

import quant
import train
from test_train import FLAGS, Job, Run, example, finish, in_process_trainer, ok

BASE = "llama-3.1-8b"
STEPS = 10  # 40 examples, batchSize 4
# One thread a process: two run at once, and a tiny model's bf16 products
# gain nothing from more threads on a busy CPU (they wait for each other).
QFLAGS = (*FLAGS, "--threads", "1")
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    job = Job(tmp_path_factory.mktemp("qlora"))
    job.cfg["hyperparameters"] = {**job.cfg["hyperparameters"], "qlora": True}
    return job


@pytest.fixture(scope="module")
def runs(job: Job) -> tuple[Run, Run, Run]:
    """Epoch 1 uninterrupted; epoch 1 stopped after step 3 (both at once,
    one process a core); then the stopped one resumed."""
    with ThreadPoolExecutor() as pool:
        whole = pool.submit(finish, job.start("whole", flags=QFLAGS))
        # --step-delay keeps the epoch going while the SIGTERM travels.
        stopped = pool.submit(finish, job.start("stopped", flags=(*QFLAGS, "--step-delay", "0.5")), 3)
        whole, stopped = ok(whole.result()), stopped.result()
    assert stopped.code == 143, stopped.stderr[-3000:]
    resumed = ok(job.run("resumed", resume_from=stopped.last_checkpoint()["path"], flags=QFLAGS))
    return whole, stopped, resumed


def test_qlora_trains_and_the_loss_decreases(runs: tuple[Run, Run, Run]):
    whole, _, _ = runs
    assert [p["step"] for p in whole.of("progress")] == list(range(1, STEPS + 1))
    said = [m["message"] for m in whole.of("log") if m["message"].startswith("QLoRA:")]
    assert said and said[0].startswith("QLoRA: 14 linear weights in 4-bit NF4 (double quantization, bfloat16 compute)")
    losses = list(whole.losses().values())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    evals = [e["validationLoss"] for e in whole.of("eval")]
    assert evals[-1] < evals[0]
    state = json.loads((Path(whole.last_checkpoint()["path"]) / "trainer_state.json").read_text())
    assert state["qlora"] is True


def test_a_stopped_qlora_epoch_resumes_with_the_same_metric_points(runs: tuple[Run, Run, Run]):
    whole, stopped, resumed = runs
    last = stopped.of("progress")[-1]["step"]
    assert 3 <= last < STEPS and stopped.last_checkpoint()["step"] == last
    # The quantized base is rebuilt in each process; it must be the same, bit for bit.
    assert [p["step"] for p in resumed.of("progress")] == list(range(last + 1, STEPS + 1))
    expected = {p["step"]: p for p in whole.of("progress")}
    for p in resumed.of("progress"):
        assert p == expected[p["step"]]
    evals = {e["step"]: e for e in whole.of("eval")}
    assert resumed.of("eval") and all(e == evals[e["step"]] for e in resumed.of("eval"))
    assert resumed.messages[-1] == {**whole.messages[-1], "outputPath": resumed.messages[-1]["outputPath"]}


def test_a_qlora_checkpoint_does_not_resume_without_qlora(tmp_path: Path, runs: tuple[Run, Run, Run]):
    whole, _, _ = runs
    plain = in_process_trainer(tmp_path)
    with pytest.raises(train.Untrainable, match=r"qlora True \(now False\)"):
        plain.restore(Path(whole.of("checkpoint")[0]["path"]))


def tiny_model() -> Any:
    fields = train.tiny_fields(BASE, None)
    tokenizer = train.build_tiny_tokenizer(fields)
    return train.build_tiny_model(BASE, fields, tokenizer), tokenizer


def test_the_frozen_base_is_4bit_nf4_and_takes_a_quarter_of_bf16s_memory():
    model, _ = tiny_model()
    cpu = torch.device("cpu")
    full, _ = tiny_model()
    bf16_bytes = {name: p.numel() * 2 for name, p in full.named_parameters()}
    quantized = quant.prepare(quant.quantize(model, torch.float32, cpu))

    layers = {name: m for name, m in quantized.named_modules() if name.rsplit(".", 1)[-1] in LINEAR}
    assert len(layers) == 14
    for name, m in layers.items():
        assert isinstance(m, bnb.nn.Linear4bit), name
        w = m.weight
        assert quant.is_4bit(w) and w.dtype == torch.uint8 and not w.requires_grad
        # Two 4-bit codes a byte.
        assert w.numel() * 2 == full.get_submodule(name).weight.numel()
        state = w.quant_state
        assert state.quant_type == "nf4" and state.blocksize == 64 and state.nested  # double quantization
        assert m.compute_dtype == torch.bfloat16
    assert not any(p.requires_grad for p in quantized.parameters())
    assert quant.parameter_count(quantized) == sum(p.numel() for p in full.parameters())

    # The memory the weights hold, scales included.
    four_bit, other = quant.weight_bytes(quantized)
    linear_bf16 = sum(b for name, b in bf16_bytes.items() if name.rsplit(".", 2)[-2] in LINEAR)
    print(f"\ntiny {BASE}: 4-bit linear weights {four_bit} bytes (bf16: {linear_bf16}); whole model "
          f"{four_bit + other} bytes, its other weights in float32 (all in bf16: {sum(bf16_bytes.values())})")
    # Each layer's code tables (1 KiB) weigh on the tiny layers: 0.57 bytes a parameter here.
    assert four_bit < 0.3 * linear_bf16
    assert four_bit + other < sum(bf16_bytes.values())
    # A layer of a real model's size: 0.5 bytes a parameter and 1/64 for its scales.
    big = bnb.nn.Params4bit(torch.randn(2048, 2048), requires_grad=False, compress_statistics=True,
                            quant_type="nf4").to(cpu)
    per_parameter = (big.untyped_storage().nbytes() + sum(t.untyped_storage().nbytes()
                     for t in quant._quant_tensors(big))) / big.quant_state.shape.numel()
    print(f"a 2048x2048 layer: {per_parameter:.4f} bytes a parameter (bf16: 2)")
    assert 0.5 < per_parameter < 0.52

    # Rebuilt from the same weights, the same bytes: what an exact resume needs.
    again = quant.quantize(tiny_model()[0], torch.float32, cpu).state_dict()
    for key, value in quantized.state_dict().items():
        assert torch.equal(value, again[key]), key

    # QLoRA's arithmetic: the weight dequantized to bf16, then a bf16 product,
    # in training and in evaluation alike (no repacked inference layout).
    layer = quantized.get_submodule("model.layers.1.mlp.down_proj")
    w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.bfloat16)
    assert (w.float() - full.get_submodule("model.layers.1.mlp.down_proj").weight).abs().max() < 0.05
    x = torch.randn(3, 5, w.shape[1])
    expected = F.linear(x.to(torch.bfloat16), w).float()
    quantized.train()
    assert torch.equal(layer(x.requires_grad_()), expected)
    quantized.eval()
    with torch.no_grad():
        assert torch.equal(layer(x.detach()), expected)
        assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)


def test_the_adapter_loads_onto_the_full_precision_base_and_helps_it(runs: tuple[Run, Run, Run]):
    whole, _, _ = runs
    adapter = Path(whole.messages[-1]["outputPath"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE and set(config["target_modules"]) == set(LINEAR)

    base, tokenizer = tiny_model()
    chat = train.chat_format(tokenizer)
    held_out = [train.encode_example(train.normalize_example(example(i)), chat, 256) for i in range(200, 216)]

    def loss(model: Any) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for e in held_out:
                labels = torch.tensor([e.labels])
                out = model(input_ids=torch.tensor([e.input_ids]), labels=labels)
                total, count = total + out.loss.item() * e.targets, count + e.targets
        return total / count

    before = loss(base)
    tuned = PeftModel.from_pretrained(base, adapter)
    assert all(p.dtype == torch.float32 for name, p in tuned.named_parameters() if "lora_" in name)
    assert any(p.abs().sum() > 0 for name, p in tuned.named_parameters() if "lora_B" in name)
    after = loss(tuned.eval())
    print(f"\nheld-out loss of the full-precision base: {before:.3f}; with the QLoRA adapter: {after:.3f}")
    assert after < before


def test_qlora_is_a_boolean_hyperparameter_false_when_absent(tmp_path: Path):
    job = Job(tmp_path)
    cfg = {**job.cfg, "checkpointDir": str(tmp_path / "c"), "outputDir": str(tmp_path / "o")}
    assert train.parse_config(cfg).qlora is False
    assert train.parse_config({**cfg, "hyperparameters": {**cfg["hyperparameters"], "qlora": True}}).qlora is True
    with pytest.raises(train.Untrainable, match=r"hyperparameters.qlora must be true or false, not 'yes'"):
        train.parse_config({**cfg, "hyperparameters": {**cfg["hyperparameters"], "qlora": "yes"}})
