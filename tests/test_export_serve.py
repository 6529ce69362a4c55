"""An exported GGUF served by llama.cpp's OpenAI-compatible server (llama-cpp-python's
`llama_cpp.server`) on the loopback address: it answers a completion and a chat completion, and
the test starts and stops it within a bounded time."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("llama_cpp.server.app", reason="needs the serve extra: pip install '.[serve]'")
pytest.importorskip("sentencepiece", reason="needs the serve extra: pip install '.[serve]'")

from test_export import pruned_folder  # noqa: E402

from gradpruner.export.gguf import export_gguf  # noqa: E402

HOST = "127.0.0.1"
START_SECONDS = 90
PROMPT = "The capital of France is"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def request(url: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        assert response.status == 200
        return json.loads(response.read())


def wait_until_up(server: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server stopped: {server.stderr.read().decode()[-2000:]}")
        try:
            request(f"{url}/v1/models", timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"the server did not answer within {START_SECONDS} s")


def test_served_file_answers_completion_and_chat(tmp_path):
    from llama_cpp import Llama

    folder = pruned_folder(tmp_path, "llama")
    export = export_gguf(str(folder), str(tmp_path / "out"), ["q8_0"])
    path = tmp_path / "out" / export.files[0].name
    local = Llama(model_path=str(path), n_ctx=256, verbose=False)
    expected = local.create_completion(PROMPT, max_tokens=8, temperature=0,
                                       repeat_penalty=1.0)["choices"][0]["text"]
    local.close()

    url = f"http://{HOST}:{free_port()}"
    port = url.rsplit(":", 1)[1]
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(path),
                               "--host", HOST, "--port", port, "--n_ctx", "256"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_up(server, url)
        completion = request(f"{url}/v1/completions",
                             {"prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                              "repeat_penalty": 1.0})
        assert completion["choices"][0]["text"] == expected  # the exported model, greedy
        assert completion["usage"]["prompt_tokens"] > 0
        chat = request(f"{url}/v1/chat/completions",
                       {"messages": [{"role": "user", "content": "Name a colour."}],
                        "max_tokens": 8, "temperature": 0})
        message = chat["choices"][0]["message"]
        assert message["role"] == "assistant" and isinstance(message["content"], str)
        assert chat["usage"]["completion_tokens"] > 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode is not None
