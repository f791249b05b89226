"""`make lab` works: JupyterLab starts from the project's own set-up and runs a chapter.

The test runs `make lab` itself (``.venv/bin/jupyter lab notebooks/``), with LAB_ARGS for 127.0.0.1, a free
port and a random token, and no browser; reads a chapter through the REST API; runs its first code cells
in a kernel through the kernel websocket API; compares the printed output with the output stored in the
notebook; then shuts the server down and checks that the server and the kernel processes are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests
import websocket

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = "01_data.ipynb"
FIRST_CELLS = 6  # how many code cells of the chapter to run at most
CHECK_TAG = "nbval-check-output"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checked(cell: dict) -> bool:
    """Does nbval compare this cell's output (the cell tag, or the older comment marker)?"""
    source = "".join(cell["source"])
    return CHECK_TAG in cell.get("metadata", {}).get("tags", []) or "# NBVAL_CHECK_OUTPUT" in source


def stream_text(outputs: list[dict]) -> str:
    return "".join(
        "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
        for o in outputs
        if o["output_type"] == "stream" and o["name"] == "stdout"
    )


class Kernel:
    """A kernel reached through the server's websocket channels endpoint."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=180)
        self.session = uuid.uuid4().hex

    def execute(self, code: str, timeout: float = 300) -> tuple[str, list[dict]]:
        """Run ``code``; return the reply status and the outputs, as Jupyter messages give them."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": self.session, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        outputs, status, idle = [], None, False
        deadline = time.monotonic() + timeout
        while not (idle and status):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {code[:60]!r} within {timeout} s")
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                outputs.append({"output_type": "stream", "name": content["name"], "text": content["text"]})
            elif kind in ("execute_result", "display_data", "error"):
                outputs.append({"output_type": kind, **content})
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                status = content["status"]
        return status, outputs

    def close(self) -> None:
        self.ws.close()


@contextlib.contextmanager
def running_lab(tmp_path: Path):
    """`make lab`'s command with a token, a free port and no browser, stopped by its own PID on exit.

    On exit (also when the block raised) the server is asked to shut down, killed through its own process
    group if it does not, and ``info["leftovers"]`` lists any of its processes or kernels still alive.
    """
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ,
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "OMP_NUM_THREADS": "1"}
    log_path = tmp_path / "lab.log"
    log = open(log_path, "w")
    lab_args = f"--no-browser --ip=127.0.0.1 --port={port} --port-retries=0 --IdentityProvider.token={token}"
    server = subprocess.Popen(
        ["make", "--no-print-directory", "lab", f"LAB_ARGS={lab_args}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"token {token}"}
    info = {"base": base, "headers": headers, "token": token, "port": port, "pid": server.pid,
            "kernel_pids": [], "leftovers": None}
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"make lab exited with {server.returncode}:\n{log_path.read_text()}")
            try:
                if requests.get(f"{base}/api/status", headers=headers, timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within 180 s:\n{log_path.read_text()}")
            time.sleep(1)
        yield info
    finally:
        family = [server.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            family += [c.pid for c in psutil.Process(server.pid).children(recursive=True)]
        try:
            if server.poll() is None:
                requests.post(f"{base}/api/shutdown", headers=headers, timeout=10)
                server.wait(timeout=30)
        except (requests.RequestException, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)  # the process group this test started, by its PID
            server.wait(timeout=30)
        finally:
            log.close()
        alive = []
        for pid in dict.fromkeys(family + info["kernel_pids"]):
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        info["leftovers"] = alive
        for pid in alive:  # never leave them running, even though the test will fail
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def start_kernel(lab: dict, body: dict, endpoint: str = "sessions") -> tuple[Kernel, str]:
    reply = requests.post(f"{lab['base']}/api/{endpoint}", headers=lab["headers"], json=body, timeout=120)
    assert reply.ok, reply.text
    kernel_id = reply.json()["kernel"]["id"] if endpoint == "sessions" else reply.json()["id"]
    url = f"ws://127.0.0.1:{lab['port']}/api/kernels/{kernel_id}/channels?token={lab['token']}"
    return Kernel(url), kernel_id


def test_lab_runs_a_chapter_and_shuts_down(tmp_path):
    with running_lab(tmp_path) as lab:
        base, headers = lab["base"], lab["headers"]
        # The server is rooted at notebooks/ and serves the chapter through its contents API.
        listing = requests.get(f"{base}/api/contents", headers=headers, timeout=30).json()
        assert CHAPTER in {item["name"] for item in listing["content"]}
        reply = requests.get(f"{base}/api/contents/{CHAPTER}", headers=headers, timeout=30)
        code_cells = [c for c in reply.json()["content"]["cells"] if c["cell_type"] == "code"][:FIRST_CELLS]
        assert any(checked(c) for c in code_cells), f"none of the first {FIRST_CELLS} cells has output to check"

        # A session starts a kernel for the chapter, as opening it in JupyterLab does.
        kernel, _ = start_kernel(lab, {"path": CHAPTER, "type": "notebook", "name": CHAPTER,
                                       "kernel": {"name": "python3"}})
        try:
            status, outputs = kernel.execute("import os, vae_utils; print(os.getpid(), vae_utils.__file__)")
            assert status == "ok", outputs
            pid, package = stream_text(outputs).split()
            lab["kernel_pids"].append(int(pid))
            assert Path(package).resolve().is_relative_to(ROOT), f"vae_utils comes from {package}"

            compared = 0
            for cell in code_cells:
                status, outputs = kernel.execute("".join(cell["source"]))
                errors = [o for o in outputs if o["output_type"] == "error"]
                assert status == "ok" and not errors, f"{''.join(cell['source'])[:80]!r} failed: {errors}"
                if checked(cell):
                    assert stream_text(outputs) == stream_text(cell["outputs"])
                    compared += 1
            assert compared >= 1
        finally:
            kernel.close()
    assert lab["leftovers"] == [], f"processes left running after shutdown: {lab['leftovers']}"


def test_lab_shuts_down_when_the_test_fails(tmp_path):
    """A failure inside the block still stops the server and its kernel."""
    with pytest.raises(RuntimeError, match="boom"), running_lab(tmp_path) as lab:
        kernel, _ = start_kernel(lab, {"name": "python3"}, endpoint="kernels")
        status, outputs = kernel.execute("import os; print(os.getpid())")
        kernel.close()
        lab["kernel_pids"].append(int(stream_text(outputs)))
        assert psutil.pid_exists(lab["kernel_pids"][0])
        raise RuntimeError("boom")
    assert lab["leftovers"] == []
    assert not psutil.pid_exists(lab["pid"])
