"""A llama-server for a benchmark or a check: started on a free port, handed back once /health answers."""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.llm import free_port  # noqa: E402


def start_llama_server(command: list[str], env: dict[str, str], timeout_s: float = 300) -> tuple[subprocess.Popen, int]:
    """`command`: llama-server and its flags but --port. Returns the process and its port."""
    port = free_port()
    process = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command[0]} did not start")
