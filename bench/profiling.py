"""Where the time goes: summaries of py-spy's folded stacks (`py-spy record -f raw`).

Each line of a folded file is `frame;frame;...;leaf count`, a frame being
`function (path:line)`. py-spy samples only threads that are running (not idle), so a
sample share is close to a share of the process's CPU time.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<path>.*?)(?::\d+)?\)$")

# First match wins: more specific paths before general ones.
_PACKAGES = [
    ("/rest_framework/", "djangorestframework"), ("/drf_spectacular/", "drf-spectacular"),
    ("/django/db/", "django ORM"), ("/django/", "django"), ("/channels_redis/", "channels-redis"),
    ("/channels/", "channels"), ("/daphne/", "daphne"), ("/autobahn/", "autobahn (WebSocket)"),
    ("/twisted/", "twisted"), ("/asgiref/", "asgiref (sync/async hops)"), ("/celery/", "celery"),
    ("/kombu/", "kombu"), ("/billiard/", "billiard"), ("/redis/", "redis-py"), ("/psycopg_pool/", "psycopg"),
    ("/psycopg/", "psycopg"), ("/aiohttp/", "aiohttp"), ("/uvloop/", "uvloop"), ("/litellm/", "litellm"),
    ("/httpx/", "httpx"), ("/httpcore/", "httpcore"), ("/orjson", "orjson"), ("/json/", "json"),
    ("/logging/", "logging"), ("/asyncio/", "asyncio"), ("/concurrent/futures/", "concurrent.futures"),
    ("/threading.py", "threading"), ("/selectors.py", "selectors"), ("/ssl.py", "ssl"),
    ("/tasks/", "app: tasks"), ("/routing/", "app: routing"), ("/tools/", "app: tools"),
    ("/mageagent/", "app: mageagent"),
]


def package_of(path: str) -> str:
    for needle, name in _PACKAGES:
        if needle in path:
            return name
    if "site-packages" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/lib/python3" in path:
        return "stdlib: " + path.rsplit("/", 1)[-1]
    return path.rsplit("/", 1)[-1] or "?" if "/" in path else "?"


def _short(frame: str) -> tuple[str, str]:
    """(`function (file)` with the path shortened, package)."""
    m = _FRAME.match(frame)
    if not m:
        return frame, "?"
    path = m.group("path")
    short = path.split("site-packages/", 1)[-1]
    for root in ("/work/main/",):
        short = short.split(root, 1)[-1]
    if "/lib/python3" in short:
        short = short.rsplit("/lib/", 1)[-1]
    return f"{m.group('fn')} ({short})", package_of(path)


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    total = 0
    own_fn: Counter[str] = Counter()
    own_pkg: Counter[str] = Counter()
    incl_app: Counter[str] = Counter()
    incl_pkg: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        leaf, leaf_pkg = frames[-1]
        own_fn[leaf] += n
        own_pkg[leaf_pkg] += n
        for fn in {f for f, pkg in frames if pkg.startswith("app:")}:
            incl_app[fn] += n
        for pkg in {pkg for _, pkg in frames if pkg != "?"}:
            incl_pkg[pkg] += n

    def share(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100.0 * c / total, 1)) for name, c in counter.most_common(k)] if total else []

    return {"samples": total, "self_by_package": share(own_pkg, top), "self_by_function": share(own_fn, top),
            "inclusive_by_package": share(incl_pkg, top), "inclusive_app_functions": share(incl_app, top)}


def py_spy() -> str | None:
    return shutil.which("py-spy") or next(
        (str(p) for p in [Path(__import__("sys").executable).parent / "py-spy"] if p.exists()), None)


def render(label: str, s: dict[str, Any], top: int = 8) -> list[str]:
    if not s.get("samples"):
        return [f"- **{label}**: no samples."]

    def fmt(rows: list[tuple[str, float]]) -> str:
        return "; ".join(f"{name} {pct}%" for name, pct in rows[:top])

    return [f"- **{label}** ({s['samples']} samples). Inclusive by package: {fmt(s['inclusive_by_package'])}.",
            f"  Own time by package: {fmt(s['self_by_package'])}.",
            f"  Hottest functions (own time): {fmt(s['self_by_function'])}.",
            f"  Inclusive, app code: {fmt(s['inclusive_app_functions'])}."]
