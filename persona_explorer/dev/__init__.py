"""Development tools, not the product: benchmarks and the real-app test server.

* :mod:`.bench` — ``python -m persona_explorer bench``: decoding, extraction, the side by side;
* :mod:`.bench_llama` — the side-by-side decode against llama.cpp's ``llama-batched-bench``;
* :mod:`.measure` — what both share (the prompt, the machine's read bandwidth);
* :mod:`.devserver` — starts the real app in a subprocess (end-to-end tests, the app benchmark);
* :mod:`.builtin_check` — chooses each built-in's vector, layer and strength by sweeps;
* :mod:`.tour_build` — computes the Tour's slow steps into ``assets/tour/`` (re-run it when the
  model, the built-ins, the decoding defaults or the teaching data change).

Imports: anything in the project. Nothing in the domain (``core`` to ``training``) imports this
package; the CLI's ``bench`` forwards to it.
"""
