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
persona direction (its length along the unit vector). Higher means "more like the persona".
The dotted blue line is the baseline, the solid line the steered answer; the shaded band marks
the layer you steered. Steering usually lifts the steered line from that layer on.

**Per-token view.** Each generated token coloured by its projection at the steered layer: red
leans towards the persona, blue away from it. Hover a token for its value.

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

A few questions and short answers give a rough vector in a minute; more questions give a
steadier one.
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
unrelated, −1 = opposite. Related traits (*evil* and *sarcastic*, say) often point partly the
same way; opposites (*optimistic* and *pessimistic*) point apart.
"""
)


def panel(text: str) -> gr.Accordion:
    """The collapsible teaching panel at the top of a tab."""
    with gr.Accordion("What am I looking at?", open=False, elem_classes="pe-teach") as acc:
        gr.Markdown(text)
    return acc
