"""What every tab of the web app shares; a tab imports these and the domain, never another tab.

* :mod:`.context` — :class:`~.context.AppContext` (the model, the settings, the vector catalog,
  jobs per visitor, downloads) and :func:`~.context.user_errors`;
* :mod:`.catalog` — one scan of the built-ins, the library and the session's vectors;
* :mod:`.forms` — ``form_endpoint``: a form dataclass whose fields are the API's parameters;
* :mod:`.requests` — a generating form's prompt and sampling fields checked, and Stop;
* :mod:`.data_files` — teaching files and uploads for Screen data and Train;
* :mod:`.sweeping` — the optional judge, the web app's bound on a sweep, and the small sweep
  after an extraction (Sweep and Extract);
* :mod:`.markup` — escaping of every user text; :mod:`.teaching` — the "What am I looking at?"
  texts, each opening with one plain sentence; :mod:`.glossary` — the words the app uses, shown
  under every tab's teaching panel; :mod:`.fairness` — jobs per visitor.

Imports: gradio, the domain layer, ``plots``. Never a tab package.
"""
