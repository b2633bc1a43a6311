"""The Drift tab: where each assistant turn of a conversation sits on the Assistant Axis, in a
live chat (``/chat``) or a teacher-forced replay of transcripts (``/replay``).

:mod:`.tab` lays it out and wires its events; :mod:`.components` is its widgets;
:mod:`.handlers` the forms and actions; :mod:`.views` the figures and words.

Imports: ``ui.shared`` and the domain layer (``axis`` above all), never another tab.
"""
