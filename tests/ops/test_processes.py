"""The Procfile and ops.processes describe the same processes."""

import subprocess
import sys

import yaml

from ops import processes
from ops.processes import REPO


def test_the_procfile_is_the_one_ops_processes_renders() -> None:
    assert (REPO / "Procfile").read_text() == processes.procfile()


def test_the_procfile_worker_takes_leads_before_activity() -> None:
    argv = processes.worker_argv()
    assert argv[argv.index("--queues") + 1] == "leads,activity"


def test_stop_ends_a_process_that_ignores_sigterm() -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(15, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"up\n"
    processes.stop(stubborn, timeout=0.5)
    assert stubborn.returncode == -9


def test_docker_compose_runs_the_api_and_worker_as_ops_processes_does() -> None:
    # Compose has no proxy in front either: its API must be the guarded one (header and body
    # deadlines, header cap, connection cap), the worker leads first.
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert services["web"]["command"] == processes.api_argv(host="0.0.0.0", port=8000)
    assert services["worker"]["command"] == processes.worker_argv()
