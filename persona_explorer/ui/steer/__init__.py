"""The Steer tab: a prompt, a persona, a layer and a strength; both answers side by side.

* :mod:`.tab` — the layout and its events; :mod:`.handlers` — the form, ``/steer`` and the
  strength sweep, and how results are worded; :mod:`.compare` — Compare, up to three personas
  (or layers, or strengths) beside the baseline in one batch; :mod:`.capping` — activation
  capping on the Assistant Axis (``/steer_capped``).

Imports: ``ui.shared`` and the domain layer, never another tab.
"""
