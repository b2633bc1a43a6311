"""Training data and what training does to a persona: the screening and fine-tuning layer.

What it owns:

* :mod:`.samples`: chat samples from JSONL/CSV files, the one reader for screening and
  fine-tuning (malformed lines reported with their numbers), and the joined system prompt;
* :mod:`.screening` (how much persona evidence each sample carries: the projection of its
  response minus the model's own answer's, own answers cached) and :mod:`.screening_scores`
  (the result types and the scored file written as CSV/JSONL);
* :mod:`.finetune`: LoRA training on samples (inoculation context, preventive steering, a
  seed), :mod:`.adapters`: the saved adapter folders and the tuned model made from one, and
  :mod:`.adapter_io`: an adapter folder zipped for download, and an uploaded zip checked
  (hostile input) and written back as a folder;
* :mod:`.shift`: how far a tuned model moved along persona vectors on unrelated questions.

Imports: :mod:`persona_explorer.core`, :mod:`persona_explorer.engine`,
:mod:`persona_explorer.steering`, :mod:`persona_explorer.vectors` and
:mod:`persona_explorer.personas` only; never :mod:`persona_explorer.axis` or
:mod:`persona_explorer.evaluate` (siblings: what two of them share moves down a layer), nor the
app or the command line. Limits on input are :mod:`persona_explorer.core.limits`'; settings
(the cache folder, the prompt-token limit) are passed in by the caller, never read here.
"""
