"""Persona Explorer: `python app.py` (or `gradio app.py` for auto-reload while editing)."""

from persona_explorer.config import load_settings
from persona_explorer.ui import build_demo, launch_kwargs

settings = load_settings()
demo = build_demo(settings)
demo.queue(max_size=64, default_concurrency_limit=4)

if __name__ == "__main__":
    demo.launch(**launch_kwargs(settings))
