"""The Assistant Axis and what is read along it: capping, the persona space, persona drift.

* :mod:`.assistant_axis` — the axis math (default Assistant minus the roles' mean), cap floors
  and cap plans, and the axis file;
* :mod:`.build` — role rollouts that build an axis, and :func:`~.build.axis_for`, the loaded
  model's axis (shipped, cached under the caller's cache folder, or built once);
* :mod:`.capping` — activation capping: uncapped and capped answers side by side;
* :mod:`.persona_space` — the PCA map of the role vectors, with points and arrows placed in it;
* :mod:`.conversation` — conversation files (uploaded, and the shipped transcripts);
* :mod:`.windows` — the tokens each assistant turn of a conversation is read in;
* :mod:`.drift` — teacher-forced replay of a conversation, turn by turn on the axis;
  :mod:`.drift_chat` — the live chat turn placed the same way;
* :mod:`.replays` — stored replays (shipped and cached span means), read once.

Imports: ``core``, ``engine``, ``steering``, ``vectors`` and ``personas``. Never ``evaluate`` or
``training`` (siblings: what two of them share moves down a layer), nor the UI or the CLI.
Settings (the cache folder) are passed in by the caller, never read here.
"""
