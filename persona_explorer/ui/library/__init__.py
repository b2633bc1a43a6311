"""The Library tab: saved, uploaded and built-in vectors; their similarity; downloads.

* :mod:`.tab` — the layout, its events and handlers; :mod:`.similarity` — the built-ins'
  similarity panel and the sentences generated from it.

Imports: ``ui.shared`` and the domain layer, never another tab.
"""
