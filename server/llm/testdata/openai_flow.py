"""OpenAI's fine-tuning guide, step by step, against tuneforge through the
official `openai` package: a script written for OpenAI, but for its base
URL, its key and the model's name.

    TUNEFORGE_URL=http://127.0.0.1:8080 TUNEFORGE_API_KEY=tf_... \\
        python openai_flow.py --model llama-3.1-70b

One job is trained and chatted with; a second is paused, resumed and
cancelled. Each check prints what it saw; the first that fails ends the
script with status 1 and a line starting "FAIL:".
"""

import argparse
import io
import json
import os
import sys
import time

import openai

START = time.monotonic()


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)
    print(f"ok [{time.monotonic() - START:5.1f}s]: {what}", flush=True)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def jsonl(rows):
    """A training file in the chat format, as files.create takes one."""
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def examples(n, seed):
    """The guide's sarcastic assistant, on n questions with a short reply each."""
    facts = [("the capital of France", "Paris"), ("the largest planet", "Jupiter"), ("the boiling point of water", "100 C"),
             ("the author of Hamlet", "Shakespeare"), ("the fastest land animal", "the cheetah")]
    rows = []
    for i in range(n):
        thing, answer = facts[(i * 7 + seed) % len(facts)]
        rows.append({"messages": [
            {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
            {"role": "user", "content": f"What is {thing}? (question {i + 1})"},
            {"role": "assistant", "content": f"{answer}, as everyone knows."},
        ]})
    return rows


def wait(client, job_id, statuses, timeout):
    """Polls the job until its status is one of statuses, printing each change."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status != last:
            print(f"   [{time.monotonic() - START:5.1f}s] {job_id} is {job.status}", flush=True)
            last = job.status
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise Failed(f"job {job_id} is {job.status} after {timeout}s; want one of {statuses} (error: {job.error})")
        time.sleep(0.5)


def conflict(call, what):
    """Checks that call is refused with 409, as OpenAI refuses a transition the job's state does not allow."""
    try:
        call()
    except openai.ConflictError:
        check(True, what)
        return
    raise Failed(what + ": the call succeeded")


def train_and_chat(client, model, timeout):
    train = client.files.create(file=("marv.jsonl", jsonl(examples(16, 1))), purpose="fine-tune")
    valid = client.files.create(file=("marv-valid.jsonl", jsonl(examples(10, 2))), purpose="fine-tune")
    check(train.id and train.purpose == "fine-tune" and train.status == "processed", f"training file uploaded as {train.id}")

    job = client.fine_tuning.jobs.create(
        model=model, training_file=train.id, validation_file=valid.id, suffix="marv", seed=7,
        metadata={"guide": "openai", "run": "train"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 10}}},
    )
    check(job.object == "fine_tuning.job" and job.model == model and job.training_file == train.id
          and job.metadata == {"guide": "openai", "run": "train"} and job.fine_tuned_model is None
          and job.status in ("validating_files", "queued", "running"), f"job {job.id} created, {job.status}, with its metadata")
    hp = job.method.supervised.hyperparameters
    check(job.method.type == "supervised" and hp.n_epochs == 1 and hp.batch_size == 4, "the job has the hyperparameters asked for")

    events = client.fine_tuning.jobs.list_events(job.id, limit=10).data
    check(len(events) >= 1 and all(e.object == "fine_tuning.job.event" and e.message for e in events),
          f"the new job lists {len(events)} events, newest first: {events[0].message!r}" if events else "the new job lists its events")

    done = wait(client, job.id, ("succeeded", "failed", "cancelled"), timeout)
    check(done.status == "succeeded" and done.fine_tuned_model and done.finished_at and done.trained_tokens,
          f"the job succeeded with fine_tuned_model {done.fine_tuned_model!r}, {done.trained_tokens} tokens trained (error: {done.error})")

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    check(metrics and is_number(metrics[0].data.get("train_loss")) and metrics[0].data.get("step"),
          f"{len(events)} events, with the epoch's metrics {metrics[0].data if metrics else None}")
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    check(ckpts and all(k.object == "fine_tuning.job.checkpoint" and k.fine_tuning_job_id == job.id and k.step_number > 0
                        and is_number(k.metrics.train_loss) for k in ckpts),
          f"checkpoints at steps {[k.step_number for k in ckpts]}")

    check(client.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model, "the fine-tuned model is listed in /v1/models")
    answer = client.chat.completions.create(
        model=done.fine_tuned_model, max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
                  {"role": "user", "content": "What is the capital of France?"}],
    )
    reply = answer.choices[0].message
    check(answer.model == done.fine_tuned_model and reply.role == "assistant" and isinstance(reply.content, str)
          and answer.usage.completion_tokens >= 1 and answer.choices[0].finish_reason in ("stop", "length"),
          f"the fine-tuned model answers: {reply.content!r}")


def pause_resume_cancel(client, model, timeout):
    train = client.files.create(file=("marv-long.jsonl", jsonl(examples(16, 3))), purpose="fine-tune")
    # Three epochs: the pause comes once the first has kept its checkpoint,
    # long before the last ends.
    job = client.fine_tuning.jobs.create(
        model=model, training_file=train.id, metadata={"guide": "openai", "run": "pause"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
    )
    wait(client, job.id, ("running",), timeout)
    deadline = time.monotonic() + timeout
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        if time.monotonic() > deadline:
            raise Failed(f"job {job.id} kept no checkpoint within {timeout}s")
        time.sleep(0.5)

    paused = client.fine_tuning.jobs.pause(job.id)
    check(paused.status == "paused", f"pause: the job is {paused.status}")
    check(client.fine_tuning.jobs.retrieve(job.id).status == "paused", "it stays paused")
    conflict(lambda: client.fine_tuning.jobs.pause(job.id), "a paused job cannot be paused again (409)")

    resumed = client.fine_tuning.jobs.resume(job.id)
    check(resumed.status in ("validating_files", "queued", "running"), f"resume: the job is {resumed.status}")

    cancelled = client.fine_tuning.jobs.cancel(job.id)
    check(cancelled.status == "cancelled" and cancelled.finished_at and cancelled.fine_tuned_model is None,
          f"cancel: the job is {cancelled.status}")
    check(client.fine_tuning.jobs.retrieve(job.id).status == "cancelled", "it stays cancelled")
    conflict(lambda: client.fine_tuning.jobs.resume(job.id), "a cancelled job cannot be resumed (409)")

    listed = client.fine_tuning.jobs.list(metadata={"run": "pause"}).data
    check([j.id for j in listed] == [job.id], "jobs.list finds the job by its metadata")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default=os.environ.get("TUNEFORGE_URL"), help="the platform's URL (TUNEFORGE_URL)")
    p.add_argument("--model", required=True, help="a base model of the catalog")
    p.add_argument("--timeout", type=float, default=600, help="seconds each wait may take")
    args = p.parse_args()
    key = os.environ.get("TUNEFORGE_API_KEY")
    if not args.base_url or not key:
        sys.exit("FAIL: set TUNEFORGE_URL (or --base-url) and TUNEFORGE_API_KEY")
    client = openai.OpenAI(base_url=args.base_url.rstrip("/") + "/v1", api_key=key, max_retries=0)
    try:
        train_and_chat(client, args.model, args.timeout)
        pause_resume_cancel(client, args.model, args.timeout)
    except Failed as e:
        sys.exit(f"FAIL: {e}")
    except openai.APIError as e:
        sys.exit(f"FAIL: {type(e).__name__}: {e}")
    print(f"the OpenAI flow passed in {time.monotonic() - START:.1f}s")


if __name__ == "__main__":
    main()
