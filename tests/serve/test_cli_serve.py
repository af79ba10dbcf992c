"""``reprlab serve`` as a real server on 127.0.0.1 (a subprocess, stopped and checked gone), and
``reprlab export onnx``."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def test_the_real_server_answers_and_stops(index_dir):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [os.environ.get("PYTHONPATH", "")] if p)}
    proc = subprocess.Popen([sys.executable, "-m", "reprlab.cli", "serve", "--index", str(index_dir), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    assert json.loads(r.read())["status"] == "ok"
                break
            except OSError:
                assert time.time() < deadline, "the server did not start in 120 s"
                time.sleep(0.3)
        found = post(base + "/search", {"query": "virus in the lung", "k": 3})
        assert len(found["results"]) == 3
        with urllib.request.urlopen(base + "/openapi.json", timeout=10) as r:
            assert "/search" in json.loads(r.read())["paths"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no process of its group is left


def test_serve_rejects_bad_options_with_the_flag(index_dir, capsys):
    from reprlab.cli import main

    assert main(["serve", "--index", str(index_dir), "--max-k", "0"]) == 2
    assert "--max-k" in capsys.readouterr().err
    assert main(["serve", "--index", str(index_dir), "--onnx-model", "x"]) == 2
    assert "--onnx-model" in capsys.readouterr().err


def test_export_onnx_command(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from reprlab.cli import main
    from reprlab.encoder import SentenceEncoder

    out = tmp_path / "onnx"
    assert main(["export", "onnx", "--model", str(tiny_model_dir), "--out", str(out), "--int8"]) == 0
    meta = json.loads((out / "onnx.json").read_text())
    assert set(meta["files"]) == {"fp32", "int8"} and meta["source"] == str(tiny_model_dir)
    assert SentenceEncoder.from_pretrained(out, backend="onnx-int8").encode(["a text"]).shape == (1, 32)
