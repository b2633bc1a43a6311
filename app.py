"""Persona Explorer: `python app.py [--adapter DIR]` (or `gradio app.py` for auto-reload while
editing). ``--adapter`` runs the whole app on a model fine-tuned with that LoRA adapter."""

import sys

from persona_explorer.core.config import load_settings
from persona_explorer.ui import build_demo, configure_queue, launch_kwargs

settings = load_settings(argv=sys.argv[1:])
demo = configure_queue(build_demo(settings), settings)

if __name__ == "__main__":
    demo.launch(**launch_kwargs(settings))
