"""Fetches a catalog model's weights from the Hugging Face Hub for a worker
that lacks them: the repository and commit pinned in hub.json, the files a
model directory needs, each checked against the Hub's checksum, into
modelPath once per host (a lock file makes other jobs wait for the first
download), renamed into place whole. HF_HUB_OFFLINE=1 refuses instead.
Gated repositories need a token in huggingface_hub's token file
(`hf auth login` on the worker host): the trainer's environment carries
no secret.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable

HUB = Path(__file__).resolve().parent / "hub.json"
# What a model directory needs; Meta's original/ checkpoints and .bin
# copies of safetensors weights are left on the Hub.
KEEP = (".json", ".safetensors", ".model", ".jinja", ".txt", ".tiktoken")
# How often a job waiting for another's download checks the lock, and says
# it still waits (well inside the worker's hang limit before a first step).
WAIT_POLL = 1.0
WAIT_REPORT = 60.0


class Refused(Exception):
    """Fetching cannot help: exit 2."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def source(base_model: str) -> dict[str, str]:
    sources = json.loads(HUB.read_text(encoding="utf-8"))
    if base_model not in sources:
        raise Refused(f"hub.json names no Hugging Face repository for {base_model}")
    return sources[base_model]


def wanted(name: str) -> bool:
    return not name.startswith("original/") and name.endswith(KEEP) and "/" not in name


def checksum_ok(path: Path, sibling: Any) -> bool:
    """The Hub's sha256 for a large (LFS) file, its git blob id otherwise."""
    if sibling.lfs is not None:
        digest = hashlib.sha256()
        expected = sibling.lfs.sha256
    elif sibling.blob_id:
        digest = hashlib.sha1()
        digest.update(b"blob %d\0" % path.stat().st_size)
        expected = sibling.blob_id
    else:
        return True
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == expected


def fetch(base_model: str, dest: Path, log: Callable[[str, str], None]) -> None:
    """Makes dest hold base_model's weights, downloading them if no other
    process on this host did; raises Refused when it must not or cannot."""
    src = source(base_model)
    repo, revision = src["repo"], src["revision"]
    where = f"{repo} at {revision[:12]}"
    if offline():
        raise Refused(
            f"no weights for {base_model} at {dest}, and downloads are off (HF_HUB_OFFLINE=1): put them there, "
            f"let the worker download {where} from the Hugging Face Hub, or run the trainer with --init-tiny "
            f"to train a tiny random model"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        _wait_for(lock, f"another job's download of {base_model} into {dest}", log)
        if (dest / "config.json").is_file():
            log("info", f"{base_model} is in {dest}: another job downloaded it")
            return
        if dest.exists():
            if any(dest.iterdir()):
                raise Refused(f"{dest} holds files but no config.json: remove it, or complete it with {base_model}'s weights")
            dest.rmdir()
        _download(repo, revision, where, dest, log)


def _wait_for(lock: IO[str], what: str, log: Callable[[str, str], None]) -> None:
    """Takes lock, saying every WAIT_REPORT seconds that it is still
    waiting: the worker takes a trainer that is silent before its first
    step for hung, and another job's download may outlast that limit."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        log("info", f"waiting for {what}")
    started = last = time.monotonic()
    while True:
        time.sleep(WAIT_POLL)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            now = time.monotonic()
            if now - last >= WAIT_REPORT:
                log("info", f"still waiting for {what} ({(now - started) / 60:.0f} min so far)")
                last = now


def _download(repo: str, revision: str, where: str, dest: Path, log: Callable[[str, str], None]) -> None:
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    files = [s for s in info.siblings or [] if wanted(s.rfilename)]
    if not any(s.rfilename == "config.json" for s in files):
        raise Refused(f"{where} has no config.json: it is not a transformers model")
    total = sum(s.size or 0 for s in files)
    log("info", f"downloading {where} from the Hugging Face Hub: {len(files)} files, {total / 1e9:.2f} GB")
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        done = 0
        for i, sibling in enumerate(files, 1):
            path = Path(hf_hub_download(repo, sibling.rfilename, revision=revision, local_dir=tmp))
            if not checksum_ok(path, sibling):
                # A retry may fetch it whole: this is a crash, not exit 2.
                raise RuntimeError(f"{sibling.rfilename} of {where} does not match the Hub's checksum")
            done += sibling.size or 0
            log("info", f"downloaded {sibling.rfilename} ({i}/{len(files)}, {done / max(total, 1):.0%} of the bytes)")
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log("info", f"{where} is in {dest}, every file checked against the Hub's checksum")
