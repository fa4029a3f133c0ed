"""First start: serve a progress page at once while the offline demo builds, then the app.

Why: on a fresh machine the demo build (phantoms -> frozen features -> head -> index) takes
minutes; a user who opens the page must see it working, not a refused connection. So:

1. ``ProgressServer.start`` launches a tiny gradio page on the app's port before torch or the
   model is imported (seconds after ``make run``). It shows the build's stage, counts and ETA,
   read from the build's own tqdm bars and log lines (no change to the build code).
2. The build (``pipeline.demo``) runs without the embedding maps (``train.py --no-maps``): search needs only the head
   and the index. When the app is built, the progress page says so and is closed, the full app is
   launched on the same port, and the page reloads itself into it.
3. ``maps_later`` computes the t-SNE/UMAP maps in a background thread after the app is up, and
   hands them to the service when done (the pipeline's maps step, ``pipeline.steps.maps_for_run``).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Stages of a first start, in order, with what a 2-core machine took for each (docs/performance.md):
# shown as the "typical" remaining time after the current stage.
STAGES = (
    ("phantoms", "rendering the demo phantoms", 72),
    ("embedding", "embedding 3,955 studies with the frozen backbone", 205),
    ("training", "training the projector head and evaluating it", 50),
    ("index", "building the search index", 15),
    ("loading", "loading the model and index", 15),
)
_STAGE_OF_BAR = (("rendering", "phantoms"), ("embedding", "embedding"))
_STAGE_OF_LOG = (("features:", "training"), ("epoch", "training"), ("building the search index", "index"),
                 ("loading the model and index", "loading"))
READY_TEXT = "Search is ready"


class BuildProgress(logging.Handler):
    """Thread-safe view of the build: stage (only moves forward), bar counts, ETA."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.stage = STAGES[0][0]
        self.stage_started = self.started
        self.detail = ""
        self.ready = False
        self.error: str | None = None

    # ---- inputs: log records and tqdm bars --------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            return
        for needle, stage in _STAGE_OF_LOG:
            if needle in message:
                self.advance(stage)
        m = re.match(r"epoch\s+(\d+)", message)
        if m:
            with self._lock:
                self.detail = f"epoch {int(m.group(1))}"

    def advance(self, stage: str) -> None:
        names = [s[0] for s in STAGES]
        with self._lock:
            if names.index(stage) > names.index(self.stage):
                self.stage, self.stage_started, self.detail = stage, time.monotonic(), ""

    def poll_bars(self) -> dict[str, Any] | None:
        """The most recent active tqdm bar as {desc, n, total, eta_s}; advances the stage by its name."""
        from tqdm.std import tqdm

        bars = [b for b in list(getattr(tqdm, "_instances", [])) if not getattr(b, "disable", True)]
        if not bars:
            return None
        bar = max(bars, key=lambda b: getattr(b, "start_t", 0))
        desc, n, total = str(bar.desc or ""), int(bar.n), bar.total
        for needle, stage in _STAGE_OF_BAR:
            if needle in desc:
                self.advance(stage)
        rate = (n / max(time.time() - bar.start_t, 1e-6)) if n else 0.0
        eta = (total - n) / rate if rate and total else None
        return {"desc": desc, "n": n, "total": total, "eta_s": eta}

    # ---- output ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        bar = self.poll_bars()
        with self._lock:
            names = [s[0] for s in STAGES]
            i = names.index(self.stage)
            elapsed = time.monotonic() - self.started
            in_stage = time.monotonic() - self.stage_started
            if bar and bar["eta_s"] is not None:
                stage_eta = bar["eta_s"]
            else:
                stage_eta = max(STAGES[i][2] - in_stage, 0)
            eta = stage_eta + sum(s[2] for s in STAGES[i + 1:])
            return {"stage": self.stage, "step": i + 1, "steps": len(STAGES), "what": STAGES[i][1],
                    "detail": self.detail, "bar": bar, "elapsed_s": round(elapsed, 1), "eta_s": round(eta, 0),
                    "ready": self.ready, "error": self.error}

    def markdown(self) -> str:
        s = self.snapshot()
        if s["error"]:
            return f"**The first-start build failed:** {s['error']}\n\nSee the server log; restart `make run` to resume."
        if s["ready"]:
            return f"**{READY_TEXT}.** Opening the app…"
        lines = [f"### Building the offline demo (first start only): step {s['step']} of {s['steps']}",
                 f"**{s['what']}**" + (f" — {s['detail']}" if s["detail"] else "")]
        if s["bar"] and s["bar"]["total"]:
            b = s["bar"]
            pct = 100 * b["n"] / b["total"]
            lines.append(f"{b['n']:,} / {b['total']:,} ({pct:.0f}%) — {b['desc']}")
        lines.append(f"Elapsed {_mmss(s['elapsed_s'])}; about {_mmss(s['eta_s'])} left "
                     "(estimate: this step's own rate, then typical times of the later steps on 2 cores).")
        lines.append("Search opens as soon as the index is ready; the embedding maps follow a minute or two later. "
                     "Every step is cached: a restart resumes where it stopped.")
        return "\n\n".join(lines)


def _mmss(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"


# The app's config names its search_text endpoint; this page's must not (hence the split string).
_RELOAD_JS = """(text) => {
  if (!text || !text.includes("%s")) return;
  const go = () => fetch("config").then(r => r.text()).then(t => {
      if (t.includes("search_" + "text")) { location.reload(); } else { setTimeout(go, 1000); } })
    .catch(() => setTimeout(go, 1000));
  setTimeout(go, 1500);
}""" % READY_TEXT


class ProgressServer:
    """The progress page, on the app's own port until the app takes it over."""

    def __init__(self, progress: BuildProgress, demo) -> None:
        self.progress = progress
        self.demo = demo

    @classmethod
    def start(cls, host: str, port: int) -> "ProgressServer":
        import gradio as gr

        progress = BuildProgress()
        logging.getLogger().addHandler(progress)
        with gr.Blocks(title="CXR retrieval: first start") as demo:
            gr.Markdown("# Chest X-ray retrieval\nThe app is being set up on this machine for the first time.")
            status = gr.Markdown(progress.markdown(), elem_id="build-progress")
            timer = gr.Timer(1.0)
            timer.tick(progress.markdown, None, status, api_visibility="private", show_progress="hidden")
            status.change(None, status, None, js=_RELOAD_JS)
        demo.queue(default_concurrency_limit=4)
        demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, show_error=False,
                    quiet=True, theme=gr.themes.Soft())
        log.info("first start: progress page on http://%s:%d while the demo builds", host, port)
        return cls(progress, demo)

    def handover(self, grace_s: float = 2.5) -> None:
        """Say "ready" (the open pages start polling for the app), then free the port."""
        self.progress.ready = True
        time.sleep(grace_s)  # one timer tick reaches every open page
        self.close()

    def fail(self, message: str) -> None:
        self.progress.error = message

    def close(self) -> None:
        logging.getLogger().removeHandler(self.progress)
        try:
            self.demo.close()
        except Exception:  # closing a server that already stopped
            log.debug("progress page close failed", exc_info=True)


def first_start(args) -> bool:
    """True when ``app.py`` serves the default demo and it is not completely built yet."""
    if getattr(args, "run", None) or getattr(args, "index", None) or getattr(args, "bundle", None):
        return False
    from pipeline.demo import demo_pending

    return demo_pending()


def maps_later(service, run_dir: Path) -> threading.Thread | None:
    """Compute the run's embedding maps after the app is up (when missing), then give them to the service."""
    path = Path(run_dir) / "embedding_map.json"
    if path.is_file():
        return None

    def work() -> None:
        try:
            from pipeline.steps import maps_for_run

            started = time.monotonic()
            maps_for_run(run_dir)
            from webapp.plots import EmbeddingMaps

            impressions = {m.study_id: m.impression or m.findings for m in service.engine.store.all()}
            service.maps = EmbeddingMaps.load(path, impressions)
            log.info("embedding maps ready (%.0fs, after the search)", time.monotonic() - started)
        except Exception:
            log.exception("embedding maps failed; search is unaffected")

    thread = threading.Thread(target=work, name="embedding-maps", daemon=True)
    thread.start()
    return thread
