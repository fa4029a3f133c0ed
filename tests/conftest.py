"""Test-wide settings: no network, no analytics, one shared cache per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Set before anything imports huggingface_hub or gradio: offline lookups fail in
# milliseconds instead of ~30 s of retries, and gradio sends nothing out.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
