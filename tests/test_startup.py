"""First start: the progress page (stage, counts, ETA) and the hand-over of the port to the app."""
from __future__ import annotations

import logging
import time
import urllib.request

import pytest

from webapp.startup import READY_TEXT, STAGES, BuildProgress, ProgressServer


def _log(progress: BuildProgress, message: str) -> None:
    progress.emit(logging.LogRecord("train", logging.INFO, __file__, 1, message, None, None))


def test_progress_follows_bars_and_log_lines():
    from tqdm.std import tqdm

    progress = BuildProgress()
    assert progress.snapshot()["stage"] == "phantoms"
    bar = tqdm(total=400, desc="embedding (offline)", unit="study", disable=False, file=open("/dev/null", "w"))
    try:
        bar.start_t -= 10.0  # 10 s in ...
        bar.update(100)  # ... at 10 studies/s: 30 s left in this step
        snap = progress.snapshot()
        assert snap["stage"] == "embedding" and snap["step"] == 2
        assert (snap["bar"]["n"], snap["bar"]["total"]) == (100, 400)
        assert snap["bar"]["eta_s"] == pytest.approx(30, abs=2)
        later = sum(s[2] for s in STAGES[2:])  # typical times of the steps after this one
        assert snap["eta_s"] == pytest.approx(30 + later, abs=3)
        text = progress.markdown()
        assert "step 2 of 5" in text and "100 / 400 (25%)" in text and "left" in text
    finally:
        bar.close()
    _log(progress, "epoch   3  loss 1.2  val 0.5")
    assert progress.snapshot()["stage"] == "training" and "epoch 3" in progress.markdown()
    _log(progress, "rendering demo phantoms")  # never moves back
    _log(progress, "[2/2] building the search index -> x")
    assert progress.snapshot()["stage"] == "index"
    progress.ready = True
    assert READY_TEXT in progress.markdown()
    progress.error = "disk full"
    assert "failed" in progress.markdown()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read()


def test_progress_page_serves_then_hands_the_port_to_the_app():
    import gradio as gr

    from tests.app_server import free_port

    port = free_port()
    started = time.monotonic()
    server = ProgressServer.start("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/"
    try:
        assert _get(url)
        first_page = time.monotonic() - started
        config = _get(url + "config")
        assert b"build-progress" in config, config[-800:]
        assert b"search_text" not in config
    finally:
        server.handover(grace_s=0.1)
    assert server.progress.ready
    with gr.Blocks() as app:
        box = gr.Textbox()
        gr.Button("Search").click(lambda t: t, box, box, api_name="search_text")
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        assert b"search_text" in _get(url + "config")
    finally:
        app.close()
    print(f"progress page served {first_page:.1f}s after start")


def test_a_stop_while_gradio_is_still_starting_exits_cleanly(tmp_path):
    """SIGTERM (or Ctrl-C) that lands inside ``demo.launch`` before gradio blocks - a supervisor stopping an app
    that has just opened its port - ends like a stop after start: the exit steps run (the search workers are
    closed), the temp folder goes, exit 0, and no traceback in the log."""
    import subprocess
    import sys
    from pathlib import Path

    temp = tmp_path / "cxr-gradio-test"
    temp.mkdir()
    code = (
        "import os, sys\n"
        "os.environ['GRADIO_TEMP_DIR'] = sys.argv[1]\n"
        "from webapp import serving\n"
        "class StoppedWhileLaunching:\n"
        "    def launch(self, **kwargs):\n"
        "        raise KeyboardInterrupt  # what the app's SIGTERM handler raises\n"
        "serving.serve(StoppedWhileLaunching(), on_exit=[lambda: print('search workers closed')])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(temp)], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "search workers closed" in done.stdout and "Traceback" not in done.stderr
    assert not temp.exists()
