"""pytest settings of trainers/hf: nothing is downloaded from the Hugging
Face Hub unless a test says so (test_fetch.py serves a Hub of its own)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The test modules skip without these (a Python that only lints); in CI a
# missing one is a broken environment, not a reason to skip.
NEEDED = ("torch", "transformers", "peft", "safetensors", "bitsandbytes")


def pytest_configure(config: pytest.Config) -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if os.environ.get("CI") == "true" and missing:
        raise pytest.UsageError(f"CI=true and {sys.executable} lacks {', '.join(missing)}: make venv builds .venv from uv.lock")

TRAIN_PY = Path(__file__).resolve().parent / "train.py"


@pytest.fixture(scope="session")
def written_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models, written once by --write-tiny."""
    models = tmp_path_factory.mktemp("models")
    written = subprocess.run([sys.executable, str(TRAIN_PY), "--write-tiny", str(models)],
                             capture_output=True, text=True, timeout=600)
    assert written.returncode == 0, written.stderr[-3000:]
    return models
