"""Runs untrusted programs in a bubblewrap sandbox.

The sandbox has no network (own network namespace with only a loopback), its own user,
PID, IPC, UTS and cgroup namespaces, no capabilities, no nested user namespaces, a
read-only view of /usr (and the /bin, /lib* links), a private size-limited /tmp as its
only writable place (/dev, /dev/shm included, is read-only), and a read-only root.

Limits: each run gets its own cgroup (tools/cgroups.py) capping the memory (swap and
shared mappings included) and the processes of the run as a whole. Under it, rlimits set
by `prlimit` before bwrap starts limit each process: CPU time (SIGKILL at the limit), data
memory, address space, processes, file size, open files. Where no cgroup can be made the
rlimits are all there is (logged, and shown in /tools). Wall time and output size (stdout
and stderr together) are enforced here by killing the sandbox.

When this process runs as root, each run gets its own host uid from a pool (an flock'd
slot per uid), because the kernel never applies RLIMIT_NPROC to root and counts it per
user: a shared uid would let concurrent runs starve each other. Not root, the process
limit is counted on top of the tasks this user already runs (best effort, documented).

Code never runs unsandboxed: when bwrap or prlimit is missing or cannot create the
namespaces here, `sandbox_unavailable_reason()` says why and nothing runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .cgroups import CgroupError, RunCgroup, cgroup_layout
from .conf import knob

# Debian and most distributions: /bin, /lib, /lib64, /sbin are links into /usr.
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")


class SandboxUnavailable(RuntimeError):
    pass


class SandboxBusy(RuntimeError):
    pass


@dataclass(frozen=True)
class Limits:
    cpu_s: int
    wall_s: float
    memory_mb: int
    max_procs: int
    output_bytes: int
    tmp_mb: int
    # Extra address space on top of memory_mb: V8 reserves (but does not use) ~1 GB.
    address_space_extra_mb: int = 2048

    @classmethod
    def from_settings(cls, **overrides: float) -> Limits:
        values = {"cpu_s": knob("SANDBOX_CPU_S"), "wall_s": knob("SANDBOX_WALL_S"),
                  "memory_mb": knob("SANDBOX_MEMORY_MB"), "max_procs": knob("SANDBOX_MAX_PROCS"),
                  "output_bytes": knob("SANDBOX_OUTPUT_BYTES"), "tmp_mb": knob("SANDBOX_TMP_MB")}
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class RunResult:
    exit_code: int | None
    stdout: str
    stderr: str
    killed: str | None = None  # wall_time | cpu_time | memory | output_limit | signal:<NAME>
    truncated: bool = False
    duration_ms: int = 0
    oom_kills: int = 0  # processes of the run the kernel killed at its memory limit


def _binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    for path in knob("SANDBOX_RO_BINDS"):
        args += ["--ro-bind-try", path, path]
    return args


def bwrap_argv(command: list[str], limits: Limits, files: dict[str, int],
               env: dict[str, str] | None = None) -> list[str]:
    """bwrap's arguments: `files` maps a path under /sandbox to a readable fd to copy in."""
    argv = [
        shutil.which(knob("SANDBOX_BWRAP")) or knob("SANDBOX_BWRAP"),
        "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534",
        "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv",
        # The program is the namespace's PID 1 (no bwrap init): when it ends the kernel
        # kills the rest, and bwrap's own init would be left to the host's init as a zombie.
        "--as-pid-1",
        "--hostname", "sandbox",
        *_binds(),
        # No tmpfs on /dev/shm: it stays a directory of the read-only /dev, so /tmp is the
        # one writable place (POSIX shared memory and semaphores, e.g. multiprocessing's
        # locks, fail with EROFS: the price of that).
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp",
        "--dir", "/sandbox",
    ]
    for dest, fd in files.items():
        argv += ["--ro-bind-data", str(fd), f"/sandbox/{dest}"]
    argv += [
        "--remount-ro", "/dev", "--remount-ro", "/",
        "--chdir", "/tmp",
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp",
        "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8",
        # Unbuffered, so a run killed at a limit still shows what it printed.
        "--setenv", "PYTHONUNBUFFERED", "1", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
    ]
    for key, value in (env or {}).items():
        argv += ["--setenv", key, value]
    return [*argv, "--", *command]


def _uid_tasks(uid: int) -> int:
    """Tasks (threads included) the user runs now: what RLIMIT_NPROC counts."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, KeyError, ValueError, IndexError):
            continue  # the process ended meanwhile
    return count


def limits_argv(limits: Limits, uid: int | None) -> list[str]:
    memory = limits.memory_mb * 1024 * 1024
    address_space = memory + limits.address_space_extra_mb * 1024 * 1024
    procs = limits.max_procs if uid is not None else _uid_tasks(os.getuid()) + limits.max_procs
    argv = [shutil.which("prlimit") or "prlimit",
            # As PID 1 the program ignores SIGXCPU: the hard limit's SIGKILL stops it.
            f"--cpu={limits.cpu_s}:{limits.cpu_s}", f"--data={memory}:{memory}",
            f"--as={address_space}:{address_space}", f"--nproc={procs}:{procs}",
            f"--fsize={limits.tmp_mb * 1024 * 1024}:{limits.tmp_mb * 1024 * 1024}",
            "--nofile=256:256", "--core=0:0", "--"]
    if uid is not None:
        argv = [shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--", *argv]
    return argv


@contextlib.contextmanager
def _slot() -> Iterator[int | None]:
    """A run slot shared by every process on this host (flock'd files): caps concurrent
    runs, and when root, gives the run a host uid no other run uses."""
    directory = Path(tempfile.gettempdir()) / f"mageagent-sandbox-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        # Someone else made it (a shared /tmp): their lock files could pin our slots.
        raise SandboxUnavailable(f"{directory} is not a private directory of this user")
    for slot in range(knob("SANDBOX_CONCURRENCY")):
        fd = os.open(directory / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield knob("SANDBOX_UID_BASE") + slot if os.geteuid() == 0 else None
        finally:
            os.close(fd)
        return
    raise SandboxBusy("all sandbox slots are busy")


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _Availability:
    """Why no sandbox can run on this host, or None. A working sandbox is probed once per
    process; a missing one again once TOOLS_RECHECK_S has passed since the last probe, so
    bubblewrap installed while the service runs is found without a restart."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.probed: tuple[float, str | None] | None = None  # (monotonic time, reason)

    def __call__(self) -> str | None:
        probed = self.probed
        if probed is not None and (probed[1] is None or time.monotonic() - probed[0] < knob("TOOLS_RECHECK_S")):
            return probed[1]
        with self.lock:  # one probe at a time; the others read its answer
            if self.probed is not probed and self.probed is not None:
                return self.probed[1]
            reason = self._probe()
            self.probed = (time.monotonic(), reason)
            return reason

    @staticmethod
    def _probe() -> str | None:
        try:
            return _probe()
        except SandboxBusy:
            return None  # every slot is running a sandbox: it works
        except SandboxUnavailable as exc:
            return str(exc)

    def cache_clear(self) -> None:
        self.probed = None


sandbox_unavailable_reason = _Availability()


def _probe() -> str | None:
    needed = [(knob("SANDBOX_BWRAP"), "bubblewrap"), ("prlimit", "util-linux")]
    if os.geteuid() == 0:
        needed.append(("setpriv", "util-linux"))  # to run each sandbox under its own uid
    for tool, package in needed:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    limits = Limits.from_settings(wall_s=10)
    with _slot() as uid:
        argv = limits_argv(limits, uid) + bwrap_argv(["/usr/bin/true"], limits, {})
        try:
            done = subprocess.run(argv, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap could not start: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-300:]
        return f"bubblewrap cannot create its namespaces here (user namespaces disabled?): {detail}"
    return None


async def _read_capped(stream: asyncio.StreamReader, cap: int, buf: bytearray, shared: tuple[bytearray, ...],
                       over: asyncio.Event) -> None:
    """Append to `buf` while all of `shared` (stdout's and stderr's buffers) fit in `cap`."""
    # Reads on past the cap (discarding): asyncio only reports the process's exit once
    # its pipes reach EOF, and a pipe nobody reads pauses before it sees EOF.
    while chunk := await stream.read(65536):
        room = cap - sum(len(b) for b in shared)
        if room > 0:
            buf += chunk[:room]
        if len(chunk) > room:
            over.set()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(c) for c in children.read_text().split()]
    return found


def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the sandbox's PID 1 (bwrap's child): the kernel then kills its whole PID
    namespace, and bwrap reaps it and exits by itself. Killing bwrap first would hand the
    dying PID 1 to init as a zombie, which still counts against the slot uid's
    process limit until init reaps it."""
    children = _children(proc.pid)
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    if not children:
        _kill_group(proc)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _exit(returncode: int | None) -> tuple[int | None, str | None]:
    """bwrap exits 128+N when the program died of signal N."""
    if returncode is None:
        return None, None
    if returncode < 0:
        return None, f"signal:{signal.Signals(-returncode).name}"
    if returncode > 128 and returncode - 128 in signal.valid_signals():
        sig = signal.Signals(returncode - 128)
        return None, "cpu_time" if sig == signal.SIGXCPU else f"signal:{sig.name}"
    return returncode, None


async def sandbox_run(command: list[str], *, files: dict[str, bytes] | None = None, stdin: bytes | None = None,
                      limits: Limits | None = None, env: dict[str, str] | None = None) -> RunResult:
    """Run `command` (absolute paths inside the sandbox) with `files` under /sandbox."""
    reason = sandbox_unavailable_reason()
    if reason is not None:
        raise SandboxUnavailable(reason)
    limits = limits or Limits.from_settings()
    fds = {name: _memfd(name, data) for name, data in (files or {}).items()}
    try:
        with _slot() as uid:
            cgroup = _run_cgroup(limits)
            try:
                # The cgroup is joined first, by root, before setpriv drops to the slot uid.
                argv = ((cgroup.join_argv() if cgroup else []) + limits_argv(limits, uid)
                        + bwrap_argv(command, limits, fds, env))
                run = await _supervise(argv, tuple(fds.values()), stdin, limits)
                return _with_oom_kills(run, cgroup.oom_kills() if cgroup else 0)
            finally:
                if cgroup is not None:
                    # Before the slot (and its uid) goes to the next run.
                    await asyncio.shield(cgroup.remove())
    finally:
        for fd in fds.values():
            os.close(fd)


def _run_cgroup(limits: Limits) -> RunCgroup | None:
    layout = cgroup_layout()
    if layout is None:
        return None  # rlimits only: cgroup_unavailable_reason() says why
    try:
        return RunCgroup.create(layout, memory_bytes=limits.memory_mb * 1024 * 1024, max_procs=limits.max_procs)
    except CgroupError as exc:
        # Cgroups worked when probed: running with less than was promised is not an option.
        raise SandboxUnavailable(str(exc)) from None


def _with_oom_kills(run: RunResult, oom_kills: int) -> RunResult:
    if oom_kills and run.killed in ("signal:SIGKILL", "cpu_time"):
        # The kernel's OOM killer ended the program itself (its SIGKILL looks like the rest).
        run.killed = "memory"
    run.oom_kills = oom_kills
    return run


async def _supervise(argv: list[str], pass_fds: tuple[int, ...], stdin: bytes | None, limits: Limits) -> RunResult:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, pass_fds=pass_fds)
    out, err, over = bytearray(), bytearray(), asyncio.Event()
    assert proc.stdout is not None and proc.stderr is not None
    # One cap for both streams: output_bytes is all the run may print.
    readers = [asyncio.ensure_future(_read_capped(proc.stdout, limits.output_bytes, out, (out, err), over)),
               asyncio.ensure_future(_read_capped(proc.stderr, limits.output_bytes, err, (out, err), over))]
    overflow = asyncio.ensure_future(over.wait())
    exited = asyncio.ensure_future(proc.wait())
    killed = None
    try:
        if stdin is not None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
                proc.stdin.close()
        done, _ = await asyncio.wait({exited, overflow}, timeout=limits.wall_s, return_when=asyncio.FIRST_COMPLETED)
        if exited not in done:
            killed = "output_limit" if overflow in done else "wall_time"
            _kill(proc)
        else:
            # The sandbox is gone (its PID namespace with it): read what is left in the pipes.
            await asyncio.wait(readers, timeout=2.0)
    finally:
        # Also when this coroutine is cancelled (the task was): nothing may outlive the run.
        if proc.returncode is None:
            _kill(proc)
        overflow.cancel()
        await asyncio.shield(asyncio.wait([exited], timeout=2.0))
        if proc.returncode is None:
            _kill_group(proc)
        # After the kill every writer of the pipes is dead, so the readers reach EOF.
        await asyncio.shield(asyncio.wait([exited, *readers], timeout=5.0))
        for reader in readers:
            reader.cancel()
    exit_code, died = _exit(proc.returncode)
    elapsed = time.monotonic() - started
    if killed is None and died == "signal:SIGKILL" and elapsed >= limits.cpu_s:
        died = "cpu_time"  # nobody here killed it, and it ran long enough to use its CPU time
    exited.cancel()
    return RunResult(exit_code=exit_code if killed is None else None,
                     stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"),
                     killed=killed or died, truncated=over.is_set(),
                     duration_ms=int(elapsed * 1000))
