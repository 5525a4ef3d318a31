"""Workers: N copies of the server on one port (SO_REUSEPORT), started and stopped together."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
RESTART_DELAY = 1.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) with SO_REUSEPORT: it fixes the port all workers share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def supervise(
    count: int,
    run_worker: Callable[[Callable[[], None]], int],
    on_ready: Callable[[], None],
) -> int:
    """Fork `count` workers and wait for them; 0 once every one stopped cleanly."""
    # Each worker runs run_worker(ready) and calls ready() once it listens; on_ready runs
    # when all do. A signal to this process goes to every worker; a worker that dies on
    # its own is started again.
    ready_read, ready_write = os.pipe()
    workers: dict[int, int] = {}  # pid -> worker number
    stopping = False

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            # A group of its own: a terminal's Ctrl-C reaches the supervisor only, which
            # passes it on once (a second copy would mean "stop at once").
            os.setpgid(0, 0)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = run_worker(lambda: os.write(ready_write, b"."))
            finally:
                os._exit(code)
        workers[pid] = number

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True  # the second time too: workers exit at once on a second signal
        for pid in workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass  # it has just exited; the wait loop collects it

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    for number in range(count):
        spawn(number)
    if not _all_ready(ready_read, count, workers):
        forward(signal.SIGTERM, None)
        _reap(workers)
        return 2
    on_ready()
    clean = True
    while workers:
        pid, status = os.wait()
        number = workers.pop(pid, None)
        if number is None:
            continue
        if os.waitstatus_to_exitcode(status) != 0:
            clean = False
            if not stopping:
                log.warning("worker %d (pid %d) died: starting another", number, pid)
                time.sleep(RESTART_DELAY)
                spawn(number)
    return 0 if clean else 1


def _all_ready(ready_read: int, count: int, workers: dict[int, int]) -> bool:
    """Wait until every worker listens; False if one exits first, or it takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    seen = 0
    while seen < count:
        left = deadline - time.monotonic()
        readable, _, _ = select.select([ready_read], [], [], max(min(left, 0.1), 0))
        if readable:
            seen += len(os.read(ready_read, count - seen))
        elif left <= 0 or any(os.waitpid(pid, os.WNOHANG)[0] for pid in list(workers)):
            return False
    return True


def _reap(workers: dict[int, int]) -> None:
    for pid in workers:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
