"""Processes the bench starts: the real server, the echo server and the load generator, each its own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A server subprocess whose JSON log goes to a file; the port comes from its "serving" line.

    `python` runs it from another environment (bench.peers' KServe and MLServer venvs)."""

    def __init__(self, name: str, args: list[str], log_dir: Path, timeout: float = 120.0,
                 env: dict[str, str] | None = None, python: str = sys.executable) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([python, *args], cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        self.timeout = timeout
        self.port = 0
        self.target = ""

    def wait_ready(self) -> Served:
        """Block until the process logs "serving"; fills `port` and `target`."""
        self.port = self._wait_for_serving(self.timeout)
        self.target = f"127.0.0.1:{self.port}"
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_for_serving(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("msg") == "serving":
                    return int(entry["port"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} did not report serving within {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def real_server(repository: Path, log_dir: Path, name: str = "server", *flags: str,
                env: dict[str, str] | None = None) -> Served:
    """`python -m server` on a free port; later flags override the defaults here (e.g. --metrics-port)."""
    return Served(name, ["-m", "seqserve.server", "--model-repository", str(repository), "--host", "127.0.0.1",
                         "--port", "0", "--metrics-port", "0", *flags], log_dir, env=env)


def echo_server(repository: Path, log_dir: Path) -> Served:
    return Served("echo", ["-m", "bench.echo_server", "--model-repository", str(repository), "--port", "0"], log_dir)


def run_loadgen(plan: dict[str, Any], work_dir: Path, tag: str, module: str = "bench.loadgen") -> list[dict[str, Any]]:
    """Run `python -m <module>` (a load generator: bench.loadgen, or bench.oip's) on `plan` in its own process;
    returns one result per scenario."""
    plan_path, out_path = work_dir / f"plan-{tag}.json", work_dir / f"loadgen-{tag}.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    budget = 60 + sum(s["warmup_s"] + s["duration_s"] + 5 for s in plan["scenarios"])
    done = subprocess.run([sys.executable, "-m", module, "--plan", str(plan_path), "--out", str(out_path)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=budget)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(out_path.read_text())
