from __future__ import annotations

import os
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from mageagent import metrics
from tools.cgroups import cgroup_unavailable_reason
from tools.conf import knob
from tools.registry import ERROR_PREFIX, Tool, ToolContext, ToolError, json_fit_text, json_len, tool_output_limit
from tools.sandbox import (
    Limits,
    RunResult,
    SandboxBusy,
    SandboxUnavailable,
    sandbox_run,
    sandbox_unavailable_reason,
)

Language = Literal["python", "javascript", "bash"]
SOURCE_NAMES = {"python": "main.py", "javascript": "main.js", "bash": "main.sh"}
INTERPRETERS = {"python": "SANDBOX_PYTHON", "javascript": "SANDBOX_NODE", "bash": "SANDBOX_BASH"}
# Distribution packages first, then /usr/local (e.g. the python:3.11-slim image's Python).
CANDIDATES = {"python": ("/usr/bin/python3", "/usr/local/bin/python3"),
              "javascript": ("/usr/bin/node", "/usr/local/bin/node"),
              "bash": ("/usr/bin/bash", "/bin/bash")}


def interpreter_path(language: str) -> str:
    configured = knob(INTERPRETERS[language])
    if configured:
        return str(configured)
    found = next((c for c in CANDIDATES[language] if os.access(c, os.X_OK)), CANDIDATES[language][0])
    return os.path.realpath(found)


class CodeExecutionArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: Language = Field(description="python, javascript (Node.js) or bash")
    code: str = Field(min_length=1, max_length=100_000, description="The program; print what you want to see.")


def interpreter_refusal(language: str) -> str | None:
    """Why `language` cannot run here: its interpreter must be under /usr (the sandbox's view)."""
    path = interpreter_path(language)
    real = os.path.realpath(path)
    if not os.access(real, os.X_OK):
        return f"{language} is not available on this deployment ({path} is not installed)"
    if not real.startswith("/usr/"):
        return f"{language} is not available: {real} is outside the sandbox's read-only /usr"
    return None


def command_for(language: str, limits: Limits) -> list[str]:
    interpreter = os.path.realpath(interpreter_path(language))
    source = f"/sandbox/{SOURCE_NAMES[language]}"
    if language == "python":
        return [interpreter, "-I", source]
    if language == "javascript":
        # V8 otherwise sizes its heap from the host's RAM and dies on the data rlimit first.
        return [interpreter, f"--max-old-space-size={max(16, limits.memory_mb * 3 // 4)}", source]
    return [interpreter, source]


# The limits a run is killed at; any other kill is a signal (`signal:<name>`).
KILL_REASONS = frozenset({"wall_time", "cpu_time", "memory", "output_limit"})


def render(run: RunResult, limits: Limits, max_chars: int) -> str:
    """The run as JSON of at most `max_chars` characters: stdout and stderr are cut to fit
    (truncated: true), so the registry never has to cut the JSON itself."""
    explained = {
        "wall_time": f"killed: wall time limit of {limits.wall_s:g} s exceeded",
        "cpu_time": f"killed: CPU time limit of {limits.cpu_s} s exceeded",
        "memory": f"killed: memory limit of {limits.memory_mb} MB exceeded",
        "output_limit": f"killed: output limit of {limits.output_bytes} bytes exceeded",
    }
    body: dict[str, object] = {"exit_code": run.exit_code, "stdout": run.stdout, "stderr": run.stderr,
                               "truncated": run.truncated, "duration_ms": run.duration_ms}
    if run.killed:
        body["killed"] = explained.get(run.killed, f"killed by {run.killed.removeprefix('signal:')}")
    if run.oom_kills and run.killed != "memory":
        body["memory"] = (f"the memory limit of {limits.memory_mb} MB was hit: "
                          f"{run.oom_kills} process(es) of the run were killed")
    text = _json(body)
    if len(text) <= max_chars:
        return text
    body["truncated"] = True
    room = max(0, max_chars - len(_json({**body, "stdout": "", "stderr": ""})))
    # stderr (a traceback, an error) gets up to half the room, stdout the rest.
    stderr = json_fit_text(run.stderr, max(room // 2, room - json_len(run.stdout)))
    body["stdout"], body["stderr"] = json_fit_text(run.stdout, room - json_len(stderr)), stderr
    return _json(body)


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


class CodeExecutionTool(Tool):
    name = "code_execution"
    description = (
        "Run a short program in an isolated sandbox and get its exit code, stdout and stderr. "
        "No network access; only /tmp is writable; CPU time, wall time, memory, processes and output are limited."
    )
    Arguments = CodeExecutionArguments

    @property
    def timeout_s(self) -> float:  # type: ignore[override]
        return knob("SANDBOX_WALL_S") + 15.0

    def unavailable_reason(self) -> str | None:
        return sandbox_unavailable_reason()

    def availability_note(self) -> str | None:
        reason = cgroup_unavailable_reason()
        if reason is None:
            return None
        return f"memory and process limits hold per process only, not per run (no usable cgroup: {reason})"

    async def run(self, args: CodeExecutionArguments, ctx: ToolContext) -> str:
        refusal = interpreter_refusal(args.language)
        if refusal:
            raise ToolError(refusal)
        limits = Limits.from_settings()
        try:
            run = await sandbox_run(command_for(args.language, limits),
                                    files={SOURCE_NAMES[args.language]: args.code.encode()}, limits=limits)
        except SandboxBusy:
            raise ToolError("the sandbox is busy (too many programs running); try again shortly") from None
        except SandboxUnavailable as exc:
            raise ToolError(f"the sandbox is not available: {exc}") from None
        metrics.SANDBOX_RUNS.labels(language=args.language).inc()
        if run.killed:
            metrics.SANDBOX_KILLS.labels(reason=run.killed if run.killed in KILL_REASONS else "signal").inc()
        # Room for the prefix of a failed result too, so both stay within the limit.
        content = render(run, limits, tool_output_limit() - len(ERROR_PREFIX))
        if run.killed:
            # A limit hit is a failed call: the model sees what ran and why it stopped.
            raise ToolError(content)
        return content
