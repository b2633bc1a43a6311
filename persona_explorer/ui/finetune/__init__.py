"""The Train tab: fine-tune the loaded model with LoRA on a small chat dataset (with an
inoculation context or preventive steering), watch the loss, then measure how far the persona
moved on unrelated questions, beside screening's prediction.

:mod:`.tab` lays it out and wires its events (``/train``, ``/shift``); :mod:`.components` is its
widgets, :mod:`.forms` its inputs and their checks, :mod:`.handlers` its actions,
:mod:`.views` their wording and figures, :mod:`.runs` what a session keeps of its runs,
:mod:`.tuned_models` the adapters and tuned models the server keeps, and :mod:`.downloads` the
files to take home (the adapter zipped, the shift report as JSON and CSV).

Imports: ``ui.shared`` and the domain layer (``training``, ``core``, ``plots``, ``vectors``),
never another tab. Only :mod:`.tab` imports the handlers; nothing here imports :mod:`.tab`.
"""
