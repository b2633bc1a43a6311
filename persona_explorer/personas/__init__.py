"""Who can be asked for: trait and role definitions, and the vectors made from them.

* :mod:`.definitions` — a trait or role (persona_vectors / assistant-axis JSON): read, validate;
* :mod:`.data` — the shipped traits and roles: where they are (the ``persona_data_dir`` setting,
  passed in), list, load;
* :mod:`.extract` — persona-vector extraction: batched rollouts with and against the persona's
  instructions, mean difference per layer;
* :mod:`.examples` — vectors from written example texts (trait vs neutral answers, teacher-forced);
* :mod:`.builtin` — the built-in library's specs, and rebuilding it
  (``python -m persona_explorer.personas.builtin``).

Imports: ``core``, ``engine``, ``steering``, ``vectors``. Never ``axis``, ``evaluate``,
``training``, the UI or the CLI.
"""
