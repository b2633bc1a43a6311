"""Persona Explorer: `python app.py [--adapter DIR]` (or `gradio app.py` for auto-reload while
editing). ``--adapter`` runs the whole app on a model fine-tuned with that LoRA adapter."""

import logging
import sys

from persona_explorer.core.config import load_settings
from persona_explorer.ui import build_app, launch

settings = load_settings(argv=sys.argv[1:])
logging.basicConfig(
    level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
# Built on a thread that ends, so that the server's main thread owns no OpenMP pool (see
# build_app): generation then runs at the engine's own speed in Gradio's worker threads.
demo = build_app(settings)

if __name__ == "__main__":
    launch(demo, settings)
