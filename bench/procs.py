"""CPU time and memory of the stack's processes, read from /proc (Linux only).

CPU is utime + stime of each process (all its threads); a process group such as a
prefork Celery worker is its main process plus every descendant. Snapshots are keyed by
pid, so a child that appeared or exited between two snapshots is still counted right.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    return raw.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """pid and all its descendants that are alive now."""
    children = _children_map() if children is None else children
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def machine_busy_seconds() -> tuple[float, float]:
    """(CPU seconds all CPUs spent busy since boot, of which in interrupts and softirqs).
    Interrupt time belongs to no process: on loopback it is mostly the network stack."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    irq = sum(fields[5:7])
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / _TICK, irq / _TICK


@dataclass
class Snapshot:
    """CPU seconds per pid and RSS per group, at one instant, and the machine's busy time."""

    cpu: dict[str, dict[int, float]] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    procs: dict[str, int] = field(default_factory=dict)
    machine: float = 0.0
    irq: float = 0.0


class ProcGroups:
    """Named groups of processes to measure. A group is given as a list of root pids
    (with `tree=True` their descendants count too) or as a callable returning pids."""

    def __init__(self) -> None:
        self.groups: dict[str, tuple[list[int], bool]] = {}
        self.dynamic: dict[str, object] = {}

    def add(self, name: str, pids: list[int], *, tree: bool = False) -> None:
        self.groups[name] = (list(pids), tree)

    def add_dynamic(self, name: str, resolve: object) -> None:
        self.dynamic[name] = resolve

    def pids(self) -> dict[str, list[int]]:
        children = _children_map() if any(tree for _, tree in self.groups.values()) else {}
        out: dict[str, list[int]] = {}
        for name, (roots, tree) in self.groups.items():
            pids: list[int] = []
            for root in roots:
                pids.extend(descendants(root, children) if tree else [root])
            out[name] = pids
        for name, resolve in self.dynamic.items():
            try:
                out[name] = list(resolve())  # type: ignore[operator]
            except Exception:
                out[name] = []
        return out

    def snapshot(self, *, with_rss: bool = True) -> Snapshot:
        busy, irq = machine_busy_seconds()
        snap = Snapshot(machine=busy, irq=irq)
        for name, pids in self.pids().items():
            cpu: dict[int, float] = {}
            rss = 0
            for pid in pids:
                c = cpu_seconds(pid)
                if c is None:
                    continue
                cpu[pid] = c
                if with_rss:
                    rss += rss_bytes(pid) or 0
            snap.cpu[name] = cpu
            snap.rss[name] = rss
            snap.procs[name] = len(cpu)
        return snap


def cpu_delta(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each group used between two snapshots (new pids count from zero)."""
    out: dict[str, float] = {}
    for name, now in after.cpu.items():
        then = before.cpu.get(name, {})
        out[name] = round(sum(c - then.get(pid, 0.0) for pid, c in now.items()), 3)
    # Everything else that ran on the machine meanwhile (other users, other test suites):
    # the noise these measurements were taken under.
    irq = round(max(after.irq - before.irq, 0.0), 3)
    out["other processes"] = round(max(after.machine - before.machine - sum(out.values()) - irq, 0.0), 3)
    out["kernel irq/softirq"] = irq
    return out
