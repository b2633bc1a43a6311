"""The Sweep tab: which layer, which strength? A layer x strength grid scored by the unsteered
model, its recommendation recorded in the vector (``/sweep``).

:mod:`.tab` lays it out and wires its events; :mod:`.components` is its widgets;
:mod:`.handlers` the form and actions; :mod:`.views` the tables and words.

Imports: ``ui.shared`` and the domain layer (``evaluate`` above all), never another tab.
"""
