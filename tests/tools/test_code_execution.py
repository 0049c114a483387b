"""code_execution runs hostile programs: everything here must stay inside the sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from pathlib import Path

import pytest

from tools.cgroups import cgroup_layout, cgroup_unavailable_reason
from tools.registry import ToolContext, ToolResult, registered_tools, tool_invoke, tools_list
from tools.sandbox import sandbox_unavailable_reason

pytestmark = pytest.mark.skipif(sandbox_unavailable_reason() is not None,
                                reason=f"no sandbox here: {sandbox_unavailable_reason()}")
needs_cgroups = pytest.mark.skipif(cgroup_layout() is None, reason=f"no cgroups here: {cgroup_unavailable_reason()}")
CTX = ToolContext(task_id="t-1", company_id=1)


async def run(language: str, code: str) -> ToolResult:
    return await tool_invoke("code_execution", json.dumps({"language": language, "code": code}), CTX)


def body(result: ToolResult) -> dict:
    return json.loads(result.content.removeprefix("error: "))


def processes_with(marker: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


async def test_it_runs_python_javascript_and_bash():
    python = body(await run("python", "print(sum(range(10)))"))
    javascript = body(await run("javascript", "console.log([1, 2, 3].map(x => x * 2).join(','))"))
    bash = body(await run("bash", "echo $((6 * 7)); echo oops >&2; exit 3"))

    assert python == {**python, "exit_code": 0, "stdout": "45\n", "stderr": ""}
    assert javascript["stdout"] == "2,4,6\n"
    assert (bash["exit_code"], bash["stdout"], bash["stderr"]) == (3, "42\n", "oops\n")


async def test_the_program_runs_as_nobody_without_capabilities_or_host_environment(monkeypatch):
    monkeypatch.setenv("MAGEAGENT_SECRET_FOR_TEST", "leak")
    result = body(await run("python", (
        "import os\n"
        "print(os.getuid(), os.getgid())\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "print(sorted(k for k in os.environ if 'SECRET' in k or 'DATABASE' in k))\n")))

    assert result["stdout"].splitlines() == ["65534 65534", "0000000000000000", "[]"]


async def test_it_refuses_network_access_even_to_the_hosts_loopback():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = body(await run("python", (
            "import socket\n"
            f"for target in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('example.com', 80)]:\n"
            "    try:\n"
            "        socket.create_connection(target, timeout=2)\n"
            "        print('connected', target)\n"
            "    except OSError as exc:\n"
            "        print('refused', type(exc).__name__)\n")))

    assert "connected" not in result["stdout"]
    assert result["stdout"].count("refused") == 3


async def test_it_cannot_write_outside_its_temp_dir_nor_read_host_files(tmp_path):
    host_secret = tmp_path / "secret.txt"
    host_secret.write_text("top secret")
    os.chmod(tmp_path, 0o755)
    os.chmod(host_secret, 0o644)
    result = body(await run("bash", (
        f"cat {host_secret} 2>/dev/null && echo READ-HOST-FILE\n"
        "for p in /etc/evil /usr/evil /evil /sandbox/evil /dev/evil /dev/shm/evil /proc/evil; do\n"
        "  (echo x > $p) 2>/dev/null && echo WROTE $p\n"
        "done\n"
        "echo fine > /tmp/ok && cat /tmp/ok\n"
        "ls /home /root /work 2>&1 | head -3\n")))

    assert "READ-HOST-FILE" not in result["stdout"]
    assert "WROTE" not in result["stdout"]
    assert "fine" in result["stdout"]
    assert not Path("/usr/evil").exists() and not Path("/evil").exists()
    assert "No such file or directory" in result["stdout"]


async def test_its_temp_dir_is_private_to_each_run():
    await run("bash", "echo left-behind > /tmp/note")
    result = body(await run("bash", "cat /tmp/note 2>&1 || true"))

    assert "left-behind" not in result["stdout"]


async def test_it_is_killed_at_its_wall_time_limit_and_leaves_no_process(knobs):
    knobs(SANDBOX_WALL_S=1.0)
    marker = f"wall-{uuid.uuid4().hex}"

    result = await run("bash", f"echo started; exec -a {marker} sleep 30")

    assert not result.ok
    assert "wall time limit of 1 s" in body(result)["killed"]
    assert body(result)["stdout"] == "started\n"  # what it printed before is kept
    assert processes_with(marker) == []


async def test_it_is_killed_at_its_cpu_time_limit(knobs):
    knobs(SANDBOX_CPU_S=1, SANDBOX_WALL_S=20.0)

    result = await run("python", "while True:\n    pass")

    assert not result.ok
    assert "CPU time limit of 1 s" in body(result)["killed"]


async def test_it_cannot_allocate_beyond_its_memory_limit(knobs):
    knobs(SANDBOX_MEMORY_MB=128)

    python = body(await run("python", "x = bytearray(512 * 1024 * 1024)\nprint('allocated')"))
    javascript = await run("javascript", "const a = []; while (true) a.push(Buffer.alloc(16 * 1024 * 1024, 1));")

    assert python["exit_code"] != 0 and "MemoryError" in python["stderr"]
    assert "allocated" not in python["stdout"]
    assert body(javascript)["exit_code"] != 0


def run_cgroups_left() -> list[Path]:
    layout = cgroup_layout()
    assert layout is not None
    return [c for parent in layout.parents for c in parent.glob(f"run-{os.getpid()}-*")]


@needs_cgroups
async def test_children_forked_by_a_run_share_one_memory_limit(knobs):
    knobs(SANDBOX_MEMORY_MB=64)

    # Each child stays under the per-process rlimit; together they need 200 MB.
    result = await run("python", (
        "import os, time\n"
        "children = []\n"
        "for _ in range(4):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = bytearray(50 * 1024 * 1024)\n"
        "        for i in range(0, len(block), 4096):\n"
        "            block[i] = 1\n"
        "        time.sleep(2)\n"
        "        os._exit(0)\n"
        "    children.append(pid)\n"
        "print('survivors', sum(os.waitpid(pid, 0)[1] == 0 for pid in children))\n"))

    out = body(result)
    assert "memory limit of 64 MB" in result.content
    assert "survivors 4" not in out["stdout"]
    assert run_cgroups_left() == []


@needs_cgroups
async def test_a_shared_anonymous_mapping_counts_against_the_memory_limit(knobs):
    knobs(SANDBOX_MEMORY_MB=64)

    result = await run("python", (
        "import mmap\n"
        "size = 400 * 1024 * 1024\n"
        "shared = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)\n"
        "for i in range(0, size, 4096):\n"
        "    shared[i] = 1\n"
        "print('filled')\n"))

    assert not result.ok
    assert "filled" not in body(result)["stdout"]
    assert "killed: memory limit of 64 MB exceeded" in body(result)["killed"]


def test_the_tool_says_when_its_limits_hold_per_process_only(monkeypatch):
    monkeypatch.setattr("tools.builtin.code_execution.cgroup_unavailable_reason", lambda: "no cgroup v1 memory")

    entry = next(t for t in tools_list() if t["name"] == "code_execution")

    assert entry["available"] is True
    assert "per process only" in entry["note"] and "no cgroup v1 memory" in entry["note"]
    assert registered_tools()["code_execution"].availability_note() == entry["note"]


async def test_it_cannot_start_more_processes_than_its_limit(knobs):
    knobs(SANDBOX_MAX_PROCS=8)

    result = body(await run("python", (
        "import subprocess\n"
        "started = 0\n"
        "try:\n"
        "    for _ in range(50):\n"
        "        subprocess.Popen(['sleep', '5'])\n"
        "        started += 1\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
        "print('started', started)\n")))

    assert "started " in result["stdout"], result
    started = int(result["stdout"].split("started ")[1])
    assert "refused 11" in result["stdout"]  # EAGAIN
    assert started < 8


async def test_a_fork_bomb_is_contained_and_cleaned_up(knobs):
    knobs(SANDBOX_MAX_PROCS=16, SANDBOX_WALL_S=3.0)
    marker = f"bomb-{uuid.uuid4().hex}"

    # exec -a names every forked copy, so the test can look for survivors.
    result = await run("bash", f"exec -a {marker} /usr/bin/bash -c 'bomb() {{ bomb | bomb & }}; bomb; sleep 1'")

    assert "Resource temporarily unavailable" in body(result)["stderr"]
    assert processes_with(marker) == []


async def test_it_truncates_huge_output_and_stops_the_program(knobs):
    knobs(SANDBOX_OUTPUT_BYTES=4096)

    result = await run("python", "while True:\n    print('x' * 1000)")

    assert not result.ok
    out = body(result)
    assert out["truncated"] is True
    assert len(out["stdout"]) == 4096
    assert "output limit of 4096 bytes" in out["killed"]


async def test_stdout_and_stderr_share_one_output_limit(knobs):
    knobs(SANDBOX_OUTPUT_BYTES=4096)

    out = body(await run("python", "import sys\nprint('o' * 3000)\nprint('e' * 3000, file=sys.stderr)"))

    assert len(out["stdout"]) + len(out["stderr"]) == 4096
    assert out["truncated"] is True


async def test_output_longer_than_the_models_limit_still_arrives_as_json(knobs):
    knobs(TOOL_OUTPUT_MAX_CHARS=20_000)

    result = await run("python", "import sys\nprint('x' * 30000)\nprint('a \"quoted\" warning', file=sys.stderr)")

    assert result.ok and len(result.content) <= 20_000
    out = json.loads(result.content)
    assert out["truncated"] is True and out["exit_code"] == 0
    assert out["stdout"].startswith("x" * 10_000)
    assert out["stderr"] == 'a "quoted" warning\n'


async def test_a_killed_run_with_long_output_is_valid_json_after_the_error_prefix(knobs):
    knobs(TOOL_OUTPUT_MAX_CHARS=1000, SANDBOX_WALL_S=1.0)

    result = await run("bash", "printf '\\n%.0s' {1..3000}; sleep 30")

    assert not result.ok and len(result.content) <= 1000
    out = body(result)
    assert out["truncated"] is True and "wall time limit" in out["killed"]


async def test_cancelling_the_call_kills_the_running_program(knobs):
    marker = f"cancel-{uuid.uuid4().hex}"
    call = asyncio.ensure_future(run("bash", f"exec -a {marker} sleep 30"))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if processes_with(marker):
            break
    assert processes_with(marker), "the program never started"

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    assert processes_with(marker) == []


async def test_javascript_is_refused_clearly_when_node_is_missing(knobs):
    knobs(SANDBOX_NODE="/usr/bin/no-such-node")

    result = await run("javascript", "console.log(1)")

    assert not result.ok
    assert "javascript is not available on this deployment" in result.content


async def test_the_tool_is_unavailable_and_runs_nothing_without_bubblewrap(knobs):
    knobs(SANDBOX_BWRAP="/nonexistent/bwrap")

    result = await run("python", "print('ran')")

    assert not result.ok and "not available" in result.content and "ran" not in result.content


def test_an_unknown_language_is_refused_before_anything_runs():
    result = asyncio.run(run("ruby", "puts 1"))

    assert not result.ok
    assert "invalid arguments" in result.content
