"""Evaluation: what steering does to answers, measured and compared.

* :mod:`.compare` — side-by-side steered and baseline answers with their projections (the
  Steer and Compare panels, ``steer``);
* :mod:`.run_export` — a finished run as JSON and CSV;
* :mod:`.sweep` — a layer x strength sweep scored by the unsteered model
  (:func:`~.sweep.run_sweep`, and the small one after an extraction), with :mod:`.sweep_config`
  (what a sweep is asked),
  :mod:`.sweep_result` (what it found, and the recommendation) and :mod:`.sweep_checkpoint`
  (resuming a stopped sweep);
* :mod:`.judge` — an optional LLM judge that scores answers with a rubric.

Imports: ``core``, ``engine``, ``steering``, ``vectors`` and ``personas``. Never ``axis`` or
``training`` (siblings: what two of them share moves down a layer), nor the UI or the CLI.
Settings (the cache folder, the prompt-token limit) are passed in by the caller.
"""
