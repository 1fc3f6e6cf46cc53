"""QLoRA for train.py (hyperparameters.qlora): the frozen base model's linear
weights in 4-bit NF4 with bitsandbytes, the LoRA adapter over them as usual.

Each linear layer of the base model (lm_head aside, which transformers keeps
in full precision) holds its weight as 4-bit NormalFloat codes in blocks of
64 with an absmax scale each, the scales themselves quantized to 8 bits in
blocks of 256 (double quantization): about 0.516 bytes a parameter instead of
bf16's 2. A forward pass dequantizes a layer's weight to the compute dtype
(bf16) and multiplies; the backward pass does the same for the input's
gradient. The weights never change, so every attempt rebuilds the same codes
from the same weights, and a resumed run goes on as an uninterrupted one.

bitsandbytes (0.50) runs this on CUDA and on the CPU with the same
arithmetic (its CPU backend dequantizes and calls torch's linear), so the
CPU tests train what a GPU trains.
"""

from __future__ import annotations

import logging
from typing import Any

import torch


def _bitsandbytes() -> Any:
    # On a CPU with AVX512-BF16, bitsandbytes warns at import that an optional
    # Hub kernel (the `kernels` package) is missing. That kernel serves only
    # the CPU inference layout that prepare() turns off; the warning would
    # only mislead a job's log.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import bitsandbytes

    return bitsandbytes


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype that 4-bit weights are dequantized to for each product:
    bf16, QLoRA's, but float16 on a GPU without native bf16 (where train.py
    trains in float16 with loss scaling, and bf16 would be emulated)."""
    return torch.float16 if dtype == torch.float16 else torch.bfloat16


def quantization_config(dtype: torch.dtype) -> Any:
    """transformers' BitsAndBytesConfig of QLoRA: NF4, double quantization."""
    _bitsandbytes()  # transformers imports it itself; first, so the warning stays quiet
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(dtype),
    )


def quantize(model: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """A model built in host memory (a tiny stand-in), quantized onto the
    device the way from_pretrained quantizes weights read from disk: the
    same code and the same bytes as for the model's saved directory."""
    return type(model).from_pretrained(
        None,
        config=model.config,
        state_dict=model.state_dict(),
        quantization_config=quantization_config(dtype),
        dtype=dtype,
        device_map=device,
    )


def prepare(model: Any) -> Any:
    """Readies a 4-bit model for LoRA training, as the QLoRA paper's own
    qlora.py does: every base parameter frozen, the norms in float32, the
    embeddings and lm_head left in the dtype they loaded in (bf16 on a GPU).
    PEFT's prepare_model_for_kbit_training would make those float32 too:
    under bf16 autocast their products run in bf16 all the same, and for
    Llama 3.1 8B they would take 4.2 GB, more than its 4-bit layers' 3.6 GB.
    Gradient checkpointing stays train.py's choice (off until memory needs it)."""
    bnb = _bitsandbytes()
    embeddings = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    for param in model.parameters():
        param.requires_grad = False
        if param.dtype in (torch.float16, torch.bfloat16) and not is_4bit(param) and id(param) not in embeddings:
            param.data = param.data.float()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # Else, on a CPU with AVX512-BF16, the first forward pass in eval
            # mode repacks the weight for inference for good: scales rounded
            # to bf16 and no gradient for the layer's input afterwards. An
            # evaluation must not change how training computes.
            module.support_avx512bf16_for_cpu = False
    return model


def is_4bit(param: torch.Tensor) -> bool:
    return type(param).__name__ == "Params4bit"


def parameter_count(model: Any) -> int:
    """The model's parameters, a 4-bit weight counted by its full shape, not by its packed bytes."""
    return sum(p.quant_state.shape.numel() if is_4bit(p) else p.numel() for p in model.parameters())


def _quant_tensors(param: torch.Tensor) -> list[torch.Tensor]:
    """A 4-bit weight's scales and code tables, which it needs beside its codes."""
    state = param.quant_state
    tensors = [state.absmax, state.code]
    if state.nested:
        tensors += [state.state2.absmax, state.state2.code]
    return tensors


def weight_bytes(model: Any) -> tuple[int, int]:
    """(bytes of the 4-bit weights with their scales, bytes of every other
    parameter and buffer) the model holds, each storage counted once."""
    seen: set[int] = set()

    def size(t: torch.Tensor) -> int:
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()

    quantized = other = 0
    for p in model.parameters():
        if is_4bit(p):
            quantized += size(p) + sum(size(t) for t in _quant_tensors(p))
        else:
            other += size(p)
    other += sum(size(b) for b in model.buffers())
    return quantized, other


def describe(model: Any) -> str:
    """For the load log line: what is 4-bit and what the weights take."""
    bnb = _bitsandbytes()
    quantized, other = weight_bytes(model)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    dtypes = sorted({str(m.compute_dtype).removeprefix("torch.") for m in layers})
    return (
        f"QLoRA: {len(layers)} linear weights in 4-bit NF4 (double quantization, {'/'.join(dtypes)} compute), "
        f"{quantized / 2**20:.1f} MiB; other weights {other / 2**20:.1f} MiB"
    )
