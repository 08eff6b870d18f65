"""A real Jupyter server for the tests: start it, talk to its REST API and kernel websocket.

Only 127.0.0.1 is contacted. The server runs in its own process group with private config,
runtime and data folders, and :meth:`JupyterServer.stop` kills the whole group.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_or_skip():
    """Skip when Debian's Chromium is absent, unless RECUTILS_REQUIRE_BROWSER=1 (CI): then fail."""
    import pytest

    if Path(CHROMIUM).exists():
        return CHROMIUM
    message = (f"{CHROMIUM} is missing: install it with `apt-get install -y --no-install-recommends "
               "chromium` (playwright drives it; it never downloads a browser)")
    if os.environ.get("RECUTILS_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " (RECUTILS_REQUIRE_BROWSER=1)")
    pytest.skip(message)


class JupyterServer:
    """``jupyter lab`` serving ``root`` on a free port with a random token."""

    def __init__(self, root: Path, home: Path, env: dict[str, str] | None = None) -> None:
        self.root, self.home = Path(root), Path(home)
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / "jupyter.log"
        self.proc: subprocess.Popen | None = None
        self._env = env or {}

    def start(self, timeout: float = 180.0) -> JupyterServer:
        for d in ("config", "runtime", "data"):
            (self.home / d).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self._env,
               "JUPYTER_CONFIG_DIR": str(self.home / "config"),
               "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
               "JUPYTER_DATA_DIR": str(self.home / "data"),
               "JUPYTER_PLATFORM_DIRS": "1"}
        jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or "jupyter"
        cmd = [jupyter, "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={self.port}", "--port-retries=0", f"--ServerApp.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.api("GET", "/api/status")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"jupyter lab did not answer /api/status in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def api(self, method: str, path: str, body: dict | None = None):
        """One REST call with the token; returns the decoded JSON answer (or None)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def kernel_socket(self, kernel_id: str):
        import websocket  # websocket-client, installed with jupyter-server

        url = f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?token={self.token}"
        return websocket.create_connection(url, timeout=600)


def execute(ws, code: str, session: str, timeout: float = 600.0) -> dict:
    """Run ``code`` in the kernel behind ``ws``; return its status, outputs and error (if any).

    Speaks the Jupyter messaging protocol over the server's websocket: one ``execute_request``
    on the shell channel, then iopub messages until the kernel is idle again and the shell
    ``execute_reply`` has come.
    """
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": session,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
    out = {"status": None, "text": "", "error": None}
    idle = False
    deadline = time.monotonic() + timeout
    while not (idle and out["status"] is not None):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the kernel did not finish a cell in {timeout} s:\n{code[:200]}")
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if msg["channel"] == "shell" and kind == "execute_reply":
            out["status"] = content["status"]
            if content["status"] == "error":
                out["error"] = f"{content['ename']}: {content['evalue']}"
        elif kind == "stream":
            out["text"] += content["text"]
        elif kind in ("execute_result", "display_data"):
            out["text"] += content["data"].get("text/plain", "") + "\n"
        elif kind == "error":
            out["error"] = f"{content['ename']}: {content['evalue']}"
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    return out
