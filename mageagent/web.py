"""Several daphne processes on one listening socket: one web process per core.

    python -m mageagent.web -b 127.0.0.1 -p 8080 --processes 2 [-- daphne options...]

One daphne process runs one Python interpreter and so uses at most one core: its request
handling holds the GIL, so one process tops out at what one core serves (BENCHMARKS.md).
This launcher binds the address once and starts
N `daphne --fd` children that all accept from that socket (the kernel hands each new
connection to one of them), so HTTP, SSE and WebSocket clients need no balancer in front.
Everything a follower needs is shared through Redis (the event log, the channel layer),
so a stream may be served by any child.

The launcher supervises: SIGTERM/SIGINT go to every child, which finish what they serve
(daphne's own shutdown) and the launcher exits when they have; a child that dies on its
own is restarted (at most once per second), so one crash does not halve the service.
`python -m mageagent.web --processes 1` is plain daphne with a supervisor.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mageagent.env import env_int

APP = "mageagent.asgi:application"


def default_processes() -> int:
    return env_int("MAGEAGENT_WEB_PROCESSES", os.cpu_count() or 1, minimum=1)


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    # Linux: a child gets SIGTERM when the launcher dies, even by SIGKILL (no orphans).
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def daphne_argv(fd: int, extra: list[str]) -> list[str]:
    daphne = Path(sys.executable).with_name("daphne")
    return [str(daphne) if daphne.exists() else "daphne", "--fd", str(fd), *extra, APP]


class Supervisor:
    def __init__(self, sock: socket.socket, processes: int, extra: list[str]) -> None:
        self.sock, self.processes, self.extra = sock, processes, extra
        self.children: list[subprocess.Popen[bytes] | None] = [None] * processes
        self.started_at = [0.0] * processes
        self.stopping = False

    def spawn(self, i: int) -> None:
        self.children[i] = subprocess.Popen(daphne_argv(self.sock.fileno(), self.extra),
                                            pass_fds=(self.sock.fileno(),),
                                            preexec_fn=_die_with_parent)
        self.started_at[i] = time.monotonic()

    def stop(self, signum: int, _frame: object = None) -> None:
        self.stopping = True
        for child in self.children:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for i in range(self.processes):
            self.spawn(i)
        print(f"mageagent.web: {self.processes} daphne process(es) on fd {self.sock.fileno()}: "
              + ", ".join(str(c.pid) for c in self.children if c), file=sys.stderr, flush=True)
        while True:
            time.sleep(0.2)
            alive = [c for c in self.children if c is not None and c.poll() is None]
            if self.stopping:
                if not alive:
                    return 0
                continue
            for i, child in enumerate(self.children):
                if child is not None and child.poll() is not None and time.monotonic() - self.started_at[i] >= 1:
                    print(f"mageagent.web: daphne {child.pid} exited (rc={child.returncode}); restarting",
                          file=sys.stderr, flush=True)
                    self.spawn(i)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mageagent.web", description=__doc__.split("\n\n")[0])
    parser.add_argument("-b", "--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("-p", "--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--processes", type=int, default=None,
                        help="daphne processes (default MAGEAGENT_WEB_PROCESSES, else the number of CPUs)")
    parser.add_argument("daphne_args", nargs="*", help="after --: options passed to every daphne")
    args = parser.parse_args(argv)
    processes = args.processes if args.processes is not None else default_processes()
    if processes < 1:
        parser.error("--processes must be at least 1")
    return Supervisor(bind(args.bind, args.port), processes, args.daphne_args).run()


if __name__ == "__main__":
    sys.exit(main())
