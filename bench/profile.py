"""py-spy around a phase, summarised into the report (the raw stacks stay in the work dir).

py-spy's raw format is one line per distinct stack: `frame;frame;... count`, outermost first,
with `process <pid>:"<cmd>"` frames in front when --subprocesses follows a Celery pool.
"""

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from bench.procs import Child

_LINE = re.compile(r":\d+\)$")
_PROJECT = ("(worker/", "(shared/", "(ingest_api/")
# Leaf frames by what the process is doing there; with --idle, waits are samples too.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle: pool process waiting for its next task", ("Connection._recv (billiard/",)),
    ("idle: consumer waiting in its event loop", ("_epoll.poll (kombu/",)),
    ("waiting for PostgreSQL/Redis replies (asyncio select)", ("EpollSelector.select (",)),
    (
        "socket send syscalls (loopback: the kernel delivers to, and wakes, the peer)",
        (
            "_SelectorSocketTransport.write (",
            "AbstractConnection.send_packed_command (",
            "Connection._send (billiard/",
            "RequestResponseCycle.send (uvicorn/",
            "StreamWriter.writelines (",
        ),
    ),
    ("socket reads (sync redis-py)", ("SocketBuffer._read_from_socket (",)),
)


@dataclass
class Profile:
    label: str
    child: Child
    out: Path


@dataclass
class Role:
    """One kind of process in a profile: the API, the worker's consumer, or its pool."""

    samples: int = 0
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)

    def top_self(self, n: int) -> list[tuple[str, float]]:
        return [(f, c / self.samples) for f, c in self.self_time.most_common(n)]

    def top_project(self, n: int) -> list[tuple[str, float]]:
        """Inclusive time of Leadstream's own functions: which step the time belongs to."""
        rows = [(f, c / self.samples) for f, c in self.inclusive.most_common()]
        return [(f, share) for f, share in rows if any(p in f for p in _PROJECT)][:n]

    def categories(self) -> list[tuple[str, float]]:
        shares: Counter[str] = Counter()
        for frame, count in self.self_time.items():
            name = next(
                (c for c, prefixes in CATEGORIES if frame.startswith(prefixes)),
                "Python and C code on CPU (the rest)",
            )
            shares[name] += count
        return [(c, n / self.samples) for c, n in shares.most_common() if n]


def start(
    workdir: Path,
    env: dict[str, str],
    label: str,
    pid: int,
    *,
    pool: bool = False,
    idle: bool = False,
) -> Profile:
    out = workdir / f"{label}.pyspy.txt"
    argv = [
        str(Path(sys.executable).parent / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "100",
        "--nonblocking",
        "-o",
        str(out),
    ]
    if pool:
        argv.append("--subprocesses")
    if idle:
        argv.append("--idle")  # wall time, waits included: where a batch's milliseconds go
    child = procs.spawn(
        f"py-spy-{label}", argv, env=env, cwd=workdir, log=workdir / f"{label}.pyspy.log"
    )
    return Profile(label, child, out)


def stop(profile: Profile) -> dict[str, Role]:
    if profile.child.alive():
        os.killpg(profile.child.pid, signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            profile.child.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            procs.stop(profile.child)
    return summarise(profile.out) if profile.out.exists() else {}


def summarise(path: Path) -> dict[str, Role]:
    roles: dict[str, Role] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        depth = sum(1 for f in frames if f.startswith("process "))
        role = roles.setdefault({0: "process", 1: "consumer"}.get(depth, "pool"), Role())
        frames = [_LINE.sub(")", f) for f in frames if not f.startswith("process ")]
        role.samples += n
        if frames:
            role.self_time[frames[-1]] += n
        for frame in set(frames):
            role.inclusive[frame] += n
    return roles
