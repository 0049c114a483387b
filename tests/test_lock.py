"""The lock files follow the hand-edited lists: every package a requirements*.in names is
pinned, with hashes, in the lock generated from it (bash scripts/lock.sh)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")
PIN = r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?"  # a locked name, its extras after it


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def named_in(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= named_in(path.parent / line[3:].strip())
        elif match := NAME.match(line):
            names.add(canonical(match.group(1)))
    return names


def locked(path: Path) -> dict[str, bool]:
    """Package -> whether its pin carries hashes."""
    text = path.read_text()
    pins = re.findall(rf"^{PIN}==\S+[^\n]*\\\n\s+--hash=sha256:", text, re.M)
    unhashed = re.findall(rf"^{PIN}==\S+(?:\s*;[^\n\\]*)?$", text, re.M)
    return {canonical(n): True for n in pins} | {canonical(n): False for n in unhashed}


@pytest.mark.parametrize("listed, lock", [("requirements.in", "requirements.txt"),
                                          ("requirements-dev.in", "requirements-dev.txt")])
def test_every_listed_package_is_pinned_with_hashes_in_its_lock(listed, lock):
    pins = locked(ROOT / lock)

    missing = named_in(ROOT / listed) - set(pins)
    unhashed = {name for name, hashed in pins.items() if not hashed}

    assert not missing, f"{sorted(missing)} are in {listed} but not in {lock}: run bash scripts/lock.sh"
    assert not unhashed, f"{sorted(unhashed)} are pinned without hashes in {lock}: run bash scripts/lock.sh"


def test_the_dev_lock_pins_the_runtime_packages_at_the_runtime_locks_versions():
    def versions(path: Path) -> dict[str, str]:
        return {canonical(n): v for n, v in re.findall(rf"^{PIN}==([^\s;\\]+)",
                                                       path.read_text(), re.M)}

    runtime, dev = versions(ROOT / "requirements.txt"), versions(ROOT / "requirements-dev.txt")

    assert {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v} == {}
