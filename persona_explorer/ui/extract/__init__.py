"""The Extract tab: a persona vector built from contrastive rollouts, optionally followed by a
small sweep for its layer and strength (``/extract``).

:mod:`.tab` lays it out and wires its events; :mod:`.components` is its widgets;
:mod:`.handlers` the form and actions; :mod:`.views` the words.

Imports: ``ui.shared`` and the domain layer (``personas`` above all), never another tab.
"""
