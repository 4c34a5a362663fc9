"""Child processes the bench starts, and what /proc says about processes (RSS, CPU time).

Children run in their own session so that one killpg() reaches a Celery pool's forks too,
and a Ctrl-C in the terminal reaches only the bench, which then stops them in order.
"""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ops import processes

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def spawn(name: str, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> Child:
    """Start `argv` in a session of its own (see the module's docstring)."""
    return Child(name, processes.start(argv, env=env, cwd=cwd, log=log, new_session=True), log)


def stop(child: Child, timeout: float = 20.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if it lingers; safe to call twice."""
    processes.stop(child.proc, timeout=timeout)


def wait_for_port(child: Child, port: int, timeout: float) -> None:
    processes.wait_until(
        processes.listening(port), child.proc, child.log, timeout=timeout, what=child.name
    )


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    head, _, rest = raw.rpartition(")")
    return [head.split("(", 1)[1], *rest.split()]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[2]) == pid:
                found.append(int(entry.name))
    return found


def tree(pid: int) -> list[int]:
    """The process and its direct children (Celery's pool is one level deep)."""
    return [pid, *children_of(pid)]


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += resident * PAGE
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[12]) + int(fields[13])  # utime + stime (fields 14 and 15)
    return total / CLK_TCK


def pids_named(*names: str) -> list[int]:
    """Every process whose comm is one of `names` (machine-wide: PostgreSQL's backends etc.)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] in names:
                found.append(int(entry.name))
    return found


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which user time already counts
    return (total - idle) / CLK_TCK, total / CLK_TCK
