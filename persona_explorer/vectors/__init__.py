"""Persona vectors as values and as files: never a model.

* :mod:`.persona_vector` — :class:`~.persona_vector.PersonaVector` (one direction per layer, the
  layer convention, the recorded layer and strength) and :func:`~.persona_vector.check_fits`;
* :mod:`.files` — one module per file format (safetensors, ``.pt`` read without unpickling,
  GGUF control vectors) behind ``load``/``save``, each checking declared sizes before it
  allocates;
* :mod:`.library` — the app's saved vector library on disk (quotas, owners, atomic writes).

Imports: ``core`` only, and torch, safetensors, gguf. Never the engine: reading or writing a
vector never loads a model.
"""
