"""Steering: the one place that edits the residual stream, and the passes that read it.

Every edit to a model's residual stream (adding a persona vector, capping a projection on an
axis) is an operation of :mod:`.ops`, applied by the passes here; nothing else in the project
touches the residual stream. What an edit means (a persona, the Assistant Axis, a sweep's grid)
is decided above this layer; how it is applied, at which positions, is decided here once.

* :mod:`.ops` — :class:`~.ops.Add` and :class:`~.ops.Cap`, per-row plans compiled into
  per-layer edits (:func:`~.ops.compile_plan`), the part of a plan that reaches every position
  (:func:`~.ops.all_position_edits`), and :func:`~.ops.steering_hooks` for research use;
* :mod:`.generation` — batched, steered generation with the activations captured from the same
  passes (:func:`~.generation.generate_stream`, side by side with shared noise);
* :mod:`.forced` — the one teacher-forced pass (:func:`~.forced.forced_pass`): given tokens
  read with the same steering, their spans' mean residuals, per-token residuals and
  log-probabilities (screening, a sweep's scoring, examples, conversation replay);
* :mod:`.projection` — pure projection math onto persona directions.

Imports: ``core`` and ``engine`` only (and torch). Never ``vectors``, ``personas``, ``axis``,
``evaluate``, ``training``, the UI or the CLI: they import steering.
"""
