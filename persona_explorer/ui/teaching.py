"""The "What am I looking at?" text of each tab: short, plain, and about what is on screen."""

from __future__ import annotations

import gradio as gr

PERSONA_SELECTION = """\
**The idea behind this app.** Pretraining on human text teaches a language model a whole *cast
of characters*: everyone whose writing it has read. Post-training then *selects* one of them and
refines it: the Assistant. On this view (the Persona Selection Model), training data is evidence
about *who is speaking*: examples that imply a malicious speaker can shift the model towards that
character across the board, while the same examples framed as explicitly requested need not.
Characters leave traces in the model's activations. **Persona vectors** (one direction per trait,
such as *evil* or *sycophantic*) and the **Assistant Axis** (the direction from role-play
characters towards the default Assistant) turn those traces into something you can measure and
steer.
"""

STEER = (
    PERSONA_SELECTION
    + """
**A persona vector** is a direction in the model's residual stream (the running sum of every
layer's output) at each layer: the average activation when the model plays a persona minus the
average when it does not. **Steering** adds *strength × vector* at one layer while the model
writes; a negative strength pushes away from the persona. The baseline column is the same prompt
with no steering, generated in the same batch with the same random numbers, so every difference
between the two columns comes from the vector.

**Projection by layer.** For each layer, the answer's average activation projected onto the
persona direction: its length along the unit vector, in activation units (the residual stream's
own scale). Higher means "more like the persona"; 0 means no lean either way. Top panel: the
dotted blue line is the baseline, each solid line a steered answer (one colour and marker per
row when you compare several); the shaded band marks where the vector was added ("injected at
L"). Bottom panel: steered minus baseline, the change at each layer. Before the band the two
answers differ only because their words differ; from the band on, the change also contains the
added vector itself, and what the model's later layers made of it.

**Per-token view.** Each generated token coloured by its projection at the *read-out layer* (the
dashed line in the plot). On the steered side the added vector's own component, the same for
every token, is taken out first: left in, it would paint every token red by construction. What
remains is the model's own lean: red towards the persona, blue away from it. Each panel has its
own colour scale, written above it, so compare colours within a panel and hover a token for its
value to compare across panels.

**Strength sweep.** The same prompt at several strengths (multiples of the strength you set) in
one batch, and how far each answer moves along the persona direction.
"""
)

EXTRACT = (
    PERSONA_SELECTION
    + """
**How a persona vector is found.** The model answers the same questions twice: once under system
prompts that elicit the persona (*positive*) and once under prompts that suppress it
(*negative*). The vector at each layer is the mean activation of the positive answers minus the
mean of the negative ones (the "response" variant averages over the answer's tokens; "prompt"
over the prompt's tokens; "last" takes the last prompt token). Roles are contrasted with the
default Assistant's own system prompts.

**Separation by layer.** How cleanly the projections of positive and negative answers separate
at each layer (Cohen's d: the gap between the two means in units of their spread). The highlighted
bar is the suggested steering layer: the best layer, skipping the first and last sixth of the
model where steering tends to work poorly. The dotted line is the vector's length per layer.

**Questions.** The *Questions* slider sets how many are asked: the first N of the persona's
questions, each once per prompt pair with the persona and once without. A few questions and
short answers give a rough vector in a minute; more questions give a steadier one.
"""
)

LIBRARY = (
    PERSONA_SELECTION
    + """
**The library** holds every vector you can steer with: the built-in ones, those saved here (they
survive restarts and everyone using this server can steer with them, but only the browser that
saved one can rename or delete it) and those you extracted or uploaded in this browser
session. On a public server the shared library is read-only: keep your vectors by downloading
them. A vector belongs to the model it was extracted from: one made
for another model is listed, but steering with it is refused.

**Files.** Upload `.safetensors` (this app's format, with metadata), `.pt` from persona_vectors
(one row for the embeddings, then one per layer) or from assistant-axis (one row per layer; the
layout is detected from the row count when set to *auto*), or a llama.cpp control vector
`.gguf`. Downloads come in the same formats; GGUF cannot store layer 0.

**Cosine similarity.** How aligned two vectors are at one layer: 1 = same direction, 0 =
unrelated, −1 = opposite. A vector is the difference between answers with and without its
persona, so it carries everything that changed between them, not only the named trait, and
names that sound opposite need not point apart. The built-in vectors (for SmolLM2-135M-Instruct,
at layer 20, where the heat map opens) show it: *pirate* and *sarcastic* point much the same way
(0.76), as do *pirate* and *sycophantic* (0.72); *formal* points away from every other built-in,
most of all from *pessimistic* (−0.59) and *pirate* (−0.54); and *optimistic* and *pessimistic*
are nearly unrelated (0.11), not opposite, even though each was extracted against prompts asking
for something like the other: steering towards one says little about the other. Every pair
without *formal* has a positive cosine, so part of what changes when this small model plays any
character seems to be shared. The picture is much the same from layer 10 to 22. The built-ins'
heat map and the sentences under it are computed from the shipped files.
"""
)


def panel(text: str) -> gr.Accordion:
    """The collapsible teaching panel at the top of a tab."""
    with gr.Accordion("What am I looking at?", open=False, elem_classes="pe-teach") as acc:
        gr.Markdown(text)
    return acc
