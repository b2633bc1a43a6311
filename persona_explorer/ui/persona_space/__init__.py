"""The Persona space tab: a PCA map of the role vectors at one layer, with the Assistant, the
visitor's prompt and answer, and persona vectors placed in it (``/persona_map``).

:mod:`.tab` lays it out and wires its events; :mod:`.components` is its widgets;
:mod:`.handlers` the form and actions; :mod:`.views` the figures and words.

Imports: ``ui.shared`` and the domain layer (``axis`` above all), never another tab.
"""
