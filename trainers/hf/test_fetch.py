"""fetch.py against a local HTTP server laid out like the Hugging Face
Hub's API and file URLs, serving a tiny model written by --write-tiny."""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_train import Job, Started, finish

import fetch  # noqa: E402

LLAMA = fetch.source("llama-3.1-8b")


class Hub(http.server.ThreadingHTTPServer):
    """Serves one model directory as LLAMA's repository at its revision."""

    def __init__(self, model: Path) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
        self.corrupt: set[str] = set()
        self.downloads: Counter[str] = Counter()

    def siblings(self) -> list[dict[str, Any]]:
        out = []
        for name, data in sorted(self.files.items()):
            sibling: dict[str, Any] = {"rfilename": name, "size": len(data),
                                       "blobId": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
            if name.endswith(".safetensors"):
                sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            out.append(sibling)
        return out + [{"rfilename": "original/consolidated.00.pth", "size": 1}]


class HubHandler(http.server.BaseHTTPRequestHandler):
    server: Hub

    def log_message(self, *args: Any) -> None:
        pass

    def file(self) -> tuple[str, bytes] | None:
        prefix = f"/{LLAMA['repo']}/resolve/{LLAMA['revision']}/"
        path = self.path.split("?")[0]
        if path.startswith(prefix) and path[len(prefix):] in self.server.files:
            name = path[len(prefix):]
            return name, self.server.files[name]
        return None

    def headers_of(self, name: str, data: bytes) -> None:
        self.send_response(200)
        etag = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else hashlib.sha1(data).hexdigest()
        self.send_header("X-Repo-Commit", LLAMA["revision"])
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()

    def do_HEAD(self) -> None:
        f = self.file()
        if f is None:
            self.send_error(404)
            return
        self.headers_of(*f)

    def do_GET(self) -> None:
        if self.path.split("?")[0] == f"/api/models/{LLAMA['repo']}/revision/{LLAMA['revision']}":
            body = json.dumps({"id": LLAMA["repo"], "sha": LLAMA["revision"], "siblings": self.server.siblings()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        f = self.file()
        if f is None:
            self.send_error(404)
            return
        name, data = f
        self.server.downloads[name] += 1
        if name in self.server.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        self.headers_of(name, data)
        self.wfile.write(data)


@pytest.fixture
def hub(written_models: Path) -> Iterator[Hub]:
    server = Hub(written_models / "llama-3.1-8b")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def trainer(job: Job, name: str, hub: Hub | None) -> Started:
    """One trainer process of the job's first epoch, without --init-tiny,
    downloading from hub (offline without one)."""
    env = {"HF_HUB_OFFLINE": "1"}
    if hub is not None:
        env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}", "HF_HOME": str(job.root / "hf-home")}
    return job.start(name, flags=("--threads", "1"), env=env)


def test_two_jobs_download_the_pinned_weights_once_and_train(tmp_path: Path, hub: Hub):
    models = tmp_path / "models"
    job = Job(tmp_path / "job", modelPath=str(models / "llama-3.1-8b"), validationFile=None)
    first, second = trainer(job, "a", hub), trainer(job, "b", hub)
    runs = [finish(first), finish(second)]
    for run in runs:
        assert run.code == 0, run.stderr[-3000:]
        assert run.of("result")
    # One download a file, whichever job got there first; the other waited or found it.
    assert set(hub.downloads) == set(hub.files) and set(hub.downloads.values()) == {1}
    logs = [m["message"] for run in runs for m in run.of("log")]
    assert sum(m.startswith("downloading meta-llama/Llama-3.1-8B-Instruct at 0e9e39f249a1") for m in logs) == 1
    assert any("every file checked against the Hub's checksum" in m for m in logs)
    # The other job waited for that download, or (started after it ended)
    # found the weights in place and fetched nothing: either way, no second
    # download, which the counts above check.
    assert sorted(p.name for p in (models / "llama-3.1-8b").iterdir()) == sorted(hub.files)
    assert not (models / "llama-3.1-8b" / "original").exists()


def test_a_corrupt_download_is_a_retried_crash_that_leaves_nothing(tmp_path: Path, hub: Hub):
    hub.corrupt.add("model.safetensors")
    models = tmp_path / "models"
    run = finish(trainer(Job(tmp_path / "job", modelPath=str(models / "llama-3.1-8b")), "a", hub))
    assert run.code not in (0, 2), run.messages[-3:]
    assert "does not match the Hub's checksum" in run.stderr
    assert not (models / "llama-3.1-8b").exists()
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_offline_mode_refuses_with_what_to_do(tmp_path: Path):
    models = tmp_path / "models"
    run = finish(trainer(Job(tmp_path / "job", modelPath=str(models / "llama-3.1-8b")), "a", None))
    assert run.code == 2
    message = run.messages[-1]["message"]
    assert "HF_HUB_OFFLINE=1" in message and "meta-llama/Llama-3.1-8B-Instruct" in message and "--init-tiny" in message


def test_a_job_waiting_for_another_download_keeps_saying_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The worker kills a trainer silent for too long before its first step:
    # one waiting behind a long download must keep speaking.
    monkeypatch.setattr(fetch, "WAIT_POLL", 0.02)
    monkeypatch.setattr(fetch, "WAIT_REPORT", 0.1)
    path = tmp_path / ".model.lock"
    holder = open(path, "w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.5, holder.close).start()
    lines: list[str] = []
    with open(path, "w") as lock:
        fetch._wait_for(lock, "the download", lambda level, message: lines.append(message))
    assert lines[0] == "waiting for the download"
    assert len(lines) >= 3 and all(line.startswith("still waiting for the download (") for line in lines[1:]), lines
