"""The Screen data tab: score a training file's samples for persona evidence before training
on it, with and without an inoculation context, and download the scored file.

:mod:`.tab` lays it out and wires its events (``/screen``); :mod:`.components` is its widgets,
:mod:`.runs` what it keeps of a run, :mod:`.handlers` its actions and :mod:`.views` their
wording and figures.

Imports: ``ui.shared`` and the domain layer (``training``, ``core``, ``plots``, ``vectors``),
never another tab. Only :mod:`.tab` imports the handlers and views; nothing here imports
:mod:`.tab`.
"""
