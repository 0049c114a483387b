"""One cgroup per sandbox run: memory (swap included) and processes limited for the run as
a whole. rlimits count per process, so without this a run could fork max_procs children
each using the whole memory limit, and RLIMIT_DATA does not count shared mappings at all.

cgroup v2 is used when the memory and pids controllers can be enabled below this process's
cgroup, else cgroup v1 (memory and pids hierarchies). The run cgroups live in a `mageagent`
cgroup under this process's own cgroup, never at a hierarchy's root: the run stays inside
whatever limits the host or container already puts on this service. When neither works,
`cgroup_unavailable_reason()` says why and the sandbox keeps only its rlimits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

PARENT = "mageagent"
V1_CONTROLLERS = ("memory", "pids")
# Joins the cgroups named before `--`, then becomes the sandbox command. The launcher
# joins by itself before it execs anything, so the program and everything it forks start
# inside the cgroup: moving the pid in from here after the spawn would race with a program
# that forks at once, and a preexec_fn is not safe in this threaded process.
JOIN_SCRIPT = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


class CgroupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Layout:
    version: int
    parents: tuple[Path, ...]  # v2: one `mageagent` directory; v1: one per controller


def _mounts() -> list[tuple[str, Path, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of the cgroup file systems."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            found.append((fields[3], Path(fields[4]), tail[0], set(tail[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup per v1 controller, and "" for the v2 hierarchy."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _below(mount_root: str, mount_point: Path, path: str) -> Path | None:
    relative = os.path.relpath(path, mount_root)
    if relative.startswith(".."):
        return None  # our cgroup is outside what this mount shows
    return (mount_point / relative).resolve()


def _v2_layout(mounts: list[tuple[str, Path, str, set[str]]], own: dict[str, str]) -> Layout:
    mount = next((m for m in mounts if m[2] == "cgroup2"), None)
    if mount is None or "" not in own:
        raise CgroupError("no cgroup v2 hierarchy")
    home = _below(mount[0], mount[1], own[""])
    if home is None:
        raise CgroupError("this process's cgroup v2 is not visible")
    available = set((home / "cgroup.controllers").read_text().split())
    if not {"memory", "pids"} <= available:
        raise CgroupError(f"cgroup v2 at {home} lacks the memory or pids controller")
    parent = home / PARENT
    parent.mkdir(exist_ok=True)
    try:
        # The kernel refuses this where `home` holds processes and is not the root cgroup.
        for directory in (home, parent):
            (directory / "cgroup.subtree_control").write_text("+memory +pids")
    except OSError as exc:
        with contextlib.suppress(OSError):
            parent.rmdir()
        raise CgroupError(f"cannot enable memory and pids below {home}: {exc.strerror}") from None
    return Layout(2, (parent,))


def _v1_layout(mounts: list[tuple[str, Path, str, set[str]]], own: dict[str, str]) -> Layout:
    parents = []
    for controller in V1_CONTROLLERS:
        mount = next((m for m in mounts if m[2] == "cgroup" and controller in m[3]), None)
        if mount is None or controller not in own:
            raise CgroupError(f"no cgroup v1 {controller} hierarchy")
        home = _below(mount[0], mount[1], own[controller])
        if home is None:
            raise CgroupError(f"this process's cgroup v1 {controller} is not visible")
        parents.append(home / PARENT)
    return Layout(1, tuple(parents))


def cgroup_layout() -> Layout | None:
    """Where run cgroups go, or None (then see cgroup_unavailable_reason)."""
    return _discover()[0]


def cgroup_unavailable_reason() -> str | None:
    return _discover()[1]


@cache
def _discover() -> tuple[Layout | None, str | None]:
    """Tried once per process, by creating and removing a run cgroup."""
    reasons = []
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as exc:
        mounts, own = [], {}
        reasons.append(f"cannot read /proc: {exc}")
    for build in (_v2_layout, _v1_layout):
        try:
            layout = build(mounts, own)
            RunCgroup.create(layout, memory_bytes=64 << 20, max_procs=4).remove_now()
        except (CgroupError, OSError) as exc:
            reasons.append(str(exc))
            continue
        return layout, None
    reason = "; ".join(reasons)
    logger.warning("sandbox runs get no cgroup (memory and process limits are per process only): %s", reason)
    return None, reason


@dataclass
class RunCgroup:
    layout: Layout
    directories: tuple[Path, ...]

    @classmethod
    def create(cls, layout: Layout, *, memory_bytes: int, max_procs: int) -> RunCgroup:
        name = f"run-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        cgroup = cls(layout, tuple(parent / name for parent in layout.parents))
        try:
            for directory in cgroup.directories:
                _mkdir_run(directory, layout.version)
            cgroup._limit(memory_bytes, max_procs)
        except OSError as exc:
            cgroup.remove_now()
            raise CgroupError(f"cannot set up the run's cgroup: {exc}") from None
        return cgroup

    def _limit(self, memory_bytes: int, max_procs: int) -> None:
        if self.layout.version == 2:
            (directory,) = self.directories
            _write(directory / "memory.max", memory_bytes)
            _write(directory / "memory.swap.max", 0, optional=True)
            _write(directory / "memory.oom.group", 1, optional=True)  # an OOM ends the whole run
            _write(directory / "pids.max", max_procs)
            return
        memory, pids = self.directories
        _write(memory / "memory.limit_in_bytes", memory_bytes)
        # Memory plus swap, set after the memory limit (the kernel wants memsw >= memory).
        _write(memory / "memory.memsw.limit_in_bytes", memory_bytes, optional=True)
        _write(pids / "pids.max", max_procs)

    def join_argv(self) -> list[str]:
        """The prefix that starts a command inside this cgroup (needs write access to it)."""
        procs = [str(directory / "cgroup.procs") for directory in self.directories]
        return ["/bin/sh", "-c", JOIN_SCRIPT, "mageagent-cgroup-join", *procs, "--"]

    def oom_kills(self) -> int:
        """Processes the kernel killed for going over the run's memory limit."""
        memory = self.directories[0]
        stats = "memory.events" if self.layout.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            for line in (memory / stats).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    async def remove(self) -> None:
        for _ in range(100):
            if self._try_remove():
                return
            await asyncio.sleep(0.02)  # killed processes leave their cgroup as they exit
        logger.warning("sandbox cgroup %s still has processes; left in place", self.directories[0].name)

    def remove_now(self) -> None:
        self._try_remove()

    def _try_remove(self) -> bool:
        removed = True
        for directory in self.directories:
            if not directory.exists():
                continue
            _kill_members(directory)
            try:
                directory.rmdir()
            except OSError:
                removed = False
                continue
            # An empty parent is dropped too, so it never blocks whoever owns the cgroup
            # above from removing theirs; a concurrent run re-creates it (see _mkdir_run).
            with contextlib.suppress(OSError):
                directory.parent.rmdir()
        return removed


def _mkdir_run(directory: Path, version: int) -> None:
    for _ in range(10):
        directory.parent.mkdir(exist_ok=True)
        if version == 2:
            (directory.parent / "cgroup.subtree_control").write_text("+memory +pids")
        try:
            directory.mkdir()
            return
        except FileNotFoundError:
            continue  # another run removed the empty parent meanwhile
    raise CgroupError(f"cannot create {directory}")


def _kill_members(directory: Path) -> None:
    kill = directory / "cgroup.kill"  # v2, Linux 5.14+: the kernel kills every member
    if kill.exists():
        with contextlib.suppress(OSError):
            kill.write_text("1")
            return
    with contextlib.suppress(OSError):
        for pid in (directory / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def _write(path: Path, value: int, *, optional: bool = False) -> None:
    if optional and not path.exists():
        return
    path.write_text(str(value))
