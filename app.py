"""Persona Explorer: `python app.py` (or `gradio app.py` for auto-reload while editing)."""

from persona_explorer.config import load_settings
from persona_explorer.ui import build_demo, configure_queue, launch_kwargs

settings = load_settings()
demo = configure_queue(build_demo(settings), settings)

if __name__ == "__main__":
    demo.launch(**launch_kwargs(settings))
