"""`mageagent`: the task API from a shell.

    mageagent run "prompt" --follow     # the answer on stdout as it streams, progress on stderr
    mageagent run "prompt" --wait       # the answer once finished
    mageagent follow ID | wait ID | get ID | cancel ID | list

$MAGEAGENT_URL and $MAGEAGENT_API_KEY (or --url, --api-key) say where and who.
Exit status: 0 completed, 1 failed, 3 cancelled, 4 the API refused or could not be
reached, 2 a usage error, 130 interrupted (the task goes on: `mageagent cancel ID`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from .client import MageAgent, MageAgentError

EXIT = {"completed": 0, "failed": 1, "cancelled": 3}
API_ERROR = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mageagent", description="Run and follow MageAgent tasks.")
    parser.add_argument("--url", help="the service (default $MAGEAGENT_URL, else http://127.0.0.1:8080)")
    parser.add_argument("--api-key", help="the API key (default $MAGEAGENT_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="submit a task")
    run.add_argument("prompt")
    run.add_argument("--model", help="a catalog model id; the router chooses by default")
    run.add_argument("--system", help="a system message")
    run.add_argument("--max-tokens", type=int)
    run.add_argument("--tool", action="append", dest="tools", help="a tool the task may use (repeatable)")
    run.add_argument("--priority", type=int, help="0-9, higher first")
    run.add_argument("--metadata", type=json.loads, help="a JSON object kept with the task")
    run.add_argument("--idempotency-key")
    how = run.add_mutually_exclusive_group()
    how.add_argument("-f", "--follow", action="store_true", help="print the answer as it streams")
    how.add_argument("-w", "--wait", action="store_true", help="print the answer once the task finished")
    run.add_argument("--json", action="store_true", help="print the Task object instead of the answer")

    follow = commands.add_parser("follow", help="print a task's answer as it streams")
    follow.add_argument("task_id")
    wait = commands.add_parser("wait", help="wait for a task to finish and print its Task object")
    wait.add_argument("task_id")
    wait.add_argument("--timeout", type=float)
    for name, text in (("get", "print a task"), ("cancel", "cancel a task")):
        commands.add_parser(name, help=text).add_argument("task_id")
    tasks = commands.add_parser("list", help="your tasks, newest first")
    tasks.add_argument("--status", choices=["queued", "processing", "completed", "failed", "cancelled"])
    tasks.add_argument("--model")
    tasks.add_argument("--limit", type=int, default=20)
    tasks.add_argument("--json", action="store_true", help="one Task object per line")
    return parser


class Progress:
    """One line on stderr per change: queued, processing, a retry, the end."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()
        self.chunks = 0

    def say(self, text: str) -> None:
        print(f"mageagent: {text}", file=self.out, flush=True)

    def event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "chunk":
            self.chunks += 1
        elif kind == "status":
            progress = event.get("progress") or {}
            tokens = f" · {progress['tokens']}/{progress.get('expected_tokens') or '?'} tokens" if progress else ""
            attempt = event.get("attempt") or 1
            self.say(event["status"] + (f" (attempt {attempt})" if attempt > 1 else "") + tokens)
        elif kind == "step" and event.get("name") == "model_selected":
            detail = event.get("detail")
            if isinstance(detail, dict):
                model = "/".join(str(detail[k]) for k in ("provider", "model") if detail.get(k))
                self.say(f"model {model}" + (f": {detail['reason']}" if detail.get("reason") else ""))
        elif kind == "reset":
            self.say(f"the provider failed; attempt {event.get('attempt')} starts the answer again")
        elif kind == "done":
            self.say(self.summary(event))

    def summary(self, done: dict[str, Any]) -> str:
        took = f"{time.monotonic() - self.started:.1f} s"
        if done["status"] == "failed":
            error = done.get("error") or {}
            return f"failed after {took}: {error.get('code')}: {error.get('message')}"
        result = done.get("result") or {}
        tokens = result.get("tokensUsed")
        model = result.get("model")
        parts = [done["status"], f"{self.chunks} chunks", *([f"{tokens} tokens"] if tokens is not None else []),
                 *([model] if model else []), took]
        return " · ".join(parts)


def follow(client: MageAgent, task_id: str, out: TextIO, err: TextIO) -> int:
    progress = Progress(err)
    status = "failed"
    at_line_start = True
    for event in client.events(task_id):
        progress.event(event)
        if event["type"] == "chunk":
            out.write(event["content"])
            out.flush()
            at_line_start = event["content"].endswith("\n")
        elif event["type"] == "reset" and not at_line_start:
            out.write("\n")  # what was printed stays; the new attempt starts on its own line
            at_line_start = True
        elif event["type"] == "done":
            status = event["status"]
    if not at_line_start:
        out.write("\n")
    out.flush()
    return EXIT.get(status, 1)


def _print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), file=out)


def _run(args: argparse.Namespace, client: MageAgent, out: TextIO, err: TextIO) -> int:
    if args.command == "run":
        fields = {name: getattr(args, name) for name in ("model", "system", "max_tokens", "tools", "priority",
                                                         "metadata") if getattr(args, name) is not None}
        task = client.submit(args.prompt, idempotency_key=args.idempotency_key, **fields)
        if args.follow:
            print(f"mageagent: task {task['id']} {task['status']}", file=err, flush=True)
            return follow(client, task["id"], out, err)
        if not args.wait:
            _print_json(task, out)
            return 0
        task = client.wait(task["id"])
        if args.json:
            _print_json(task, out)
        elif task["status"] == "failed":
            print(f"mageagent: failed: {task['error']['code']}: {task['error']['message']}", file=err)
        else:
            print((task.get("result") or {}).get("content", ""), file=out)
        return EXIT[task["status"]]
    if args.command == "follow":
        return follow(client, args.task_id, out, err)
    if args.command == "wait":
        task = client.wait(args.task_id, timeout=args.timeout)
        _print_json(task, out)
        return EXIT[task["status"]]
    if args.command in ("get", "cancel"):
        _print_json(client.get(args.task_id) if args.command == "get" else client.cancel(args.task_id), out)
        return 0
    for task in client.list(status=args.status, model=args.model, limit=args.limit):
        if args.json:
            print(json.dumps(task, ensure_ascii=False), file=out)
        else:
            prompt = (task.get("prompt") or "").replace("\n", " ")
            print(f"{task['id']}  {task['status']:<10}  {task['created_at'][:19]}  {prompt[:50]}", file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = _parser().parse_args(argv)
    try:
        with MageAgent(args.url, args.api_key) as client:
            return _run(args, client, out, err)
    except MageAgentError as exc:
        print(f"mageagent: {exc}", file=err)
        return API_ERROR
    except TimeoutError as exc:
        print(f"mageagent: {exc}", file=err)
        return API_ERROR
    except KeyboardInterrupt:
        print("\nmageagent: interrupted; the task goes on (mageagent cancel ID stops it)", file=err)
        return 130


if __name__ == "__main__":
    sys.exit(main())
