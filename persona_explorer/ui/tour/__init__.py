"""The Tour tab: six steps through the idea behind the app, each one click away, each with a
short text, the model's real output and a plot, and "Open this in its tab" with the same
settings (the cross-tab part is wired in :func:`persona_explorer.ui.build_demo`).

Steps 1-4 run live on the loaded model with the built-in vectors' recorded settings; steps 5
and 6 (screening with the model's own answers, three fine-tuning runs) take longer than a class
can wait, so a result computed with the same code ships in ``assets/tour/``
(``python -m persona_explorer.dev.tour_build``), with "Run it live".

Imports: gradio, the domain (``axis``, ``evaluate``, ``training``, ``vectors``), ``plots`` and
``ui.shared``; never another tab.
"""
