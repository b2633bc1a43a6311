"""The "What am I looking at?" text of each tab: short, plain, and about what is on screen.

Each text opens with one plain sentence (no term the glossary explains) saying what the tab is
for; the detail follows. Imports: gradio and :mod:`.glossary`.
"""

from __future__ import annotations

import gradio as gr

from persona_explorer.ui.shared.glossary import glossary_markdown

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
    "Here you ask the model one question twice, once as it is and once pushed towards a "
    "character, and compare the two answers side by side.\n\n"
    + PERSONA_SELECTION
    + """
**A persona vector** is a direction in the model's residual stream (the running sum of every
layer's output) at each layer: the average activation when the model plays a persona minus the
average when it does not. **Steering** adds *strength × vector* at one layer while the model
writes; a negative strength pushes away from the persona. The baseline column is the same prompt
with no steering, generated in the same batch with the same random numbers, so every difference
between the two columns comes from the vector.

**Projection by layer.** For each layer, the answer's average activation projected onto the
persona direction: its length along the unit vector, in activation units (the residual stream's
own scale). Higher means "more like the persona". Any text lies some way from 0 along it, by
an amount that differs from layer to layer, so compare the lines with each other (the baseline
is the plain Assistant), not with 0. Top panel: the
dotted blue line is the baseline, each solid line a steered answer (one colour and marker per
row when you compare several); the shaded band marks where the vector was added ("injected at
L"). Bottom panel: steered minus baseline, the change at each layer. Before the band the two
answers differ only because their words differ; from the band on, the change also contains the
added vector itself, and what the model's later layers made of it.

**Per-token view.** Each generated token coloured by its projection at the *read-out layer* (the
dashed line in the plot). On the steered side the added vector's own component, the same for
every token, is taken out first: left in, it would paint every token red by construction. What
remains is the model's own lean. Raw values at a read-out layer sit far from 0 for any text (for
the pirate, about −21 at layer 11 for plain answers), so colours are relative to the **baseline
answer's mean** there: red leans further towards the persona than the plain Assistant's average
token, blue less, uncoloured about as much. So the baseline panel is always a mix of both, and a
steered answer that leans towards the persona is mostly red. Both panels share one colour scale,
written above them with the centre's value; hover a token for its value relative to that centre.
Single tokens scatter widely (function words and content words differ by ±15 on their own):
read the panel's overall tint, not one token.

**Strength sweep.** The same prompt at several strengths (multiples of the strength you set) in
one batch, and how far each answer moves along the persona direction.
"""
)

EXTRACT = (
    "Here you teach the app a new character: the model answers questions in and out of "
    "character, and the difference becomes something you can steer with.\n\n"
    + PERSONA_SELECTION
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
    "Here are all the characters you can steer with: the built-in ones, the saved ones and "
    "your own, and how alike they are.\n\n"
    + PERSONA_SELECTION
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
at layer 20, where the heat map opens) show it: *pirate* and *sycophantic* point much the same
way (0.72), as do *pirate* and *pessimistic* (0.65); *formal* points away from every other
built-in at this layer, most of all from *pessimistic* (−0.59) and *pirate* (−0.54); and
*optimistic* and *pessimistic* are nearly unrelated (0.11), not opposite, even though each was
extracted against prompts asking for something like the other: steering towards one says little
about the other. Every pair without *formal* has a positive cosine here, so part of what changes
when this small model plays any character seems to be shared. From layer 10 to 22 the strongest
pair and *formal*'s opposition to *pessimistic* hold, while the weakest pairs wander around zero.
The built-ins' heat map and the sentences under it are computed from the shipped files.
"""
)


def panel(text: str, *, glossary: bool = True) -> gr.Accordion:
    """The collapsible teaching panel at the top of a tab, and below it the glossary (once per
    tab: a panel inside a tab, such as capping's in Steer, passes ``glossary=False``)."""
    with gr.Accordion("What am I looking at?", open=False, elem_classes="pe-teach") as acc:
        gr.Markdown(text)
    if glossary:
        with gr.Accordion(
            "Glossary: the words used here", open=False, elem_classes="pe-teach pe-glossary"
        ):
            gr.Markdown(glossary_markdown())
    return acc


PERSONA_SPACE = """\
This map shows the characters the model can play, with the helpful Assistant among them.

**Persona space.** Each dot is a *role*: the model answered the same questions while told to be
a doctor, a pirate, a demon, a whale, ... and the dot is the average activation of its answers
at the chosen layer. The **star** is the default Assistant answering the same questions. The map
is a PCA: PC1 and PC2 are the two directions in which the roles differ most. A component has no
sign of its own, so each is oriented to put the Assistant on its positive side (PC1: on the
right).

**The Assistant Axis** runs from the roles' average (the centre, where the dashed line starts)
to the Assistant. A role's colour is its position on that axis: 0 = the roles' average, 1 = the
Assistant; red leans towards the Assistant, blue away from it. On large models, Lu et al. (2026)
found PC1 of 275 roles lined up with this axis (|cos| above 0.6 at every layer; on one model PC1
alone held about 49 % of the variance): the main way characters differ is how much they are like
the Assistant.

**What this small model shows** (SmolLM2-135M-Instruct, 47 roles, measured on the shipped
file): a similar picture, weaker. PC1 explains 30–52 % of the roles' variance (40–48 % at layers
16–22) and |cos(PC1, axis)| is 0.74–0.88 from layer 8 up, but only 0.54–0.68 at layers 2–5,
where PC2 holds 17–23 % (about 10 % deeper) and *robot* even projects beyond the Assistant. The
Assistant lies about 2 standard deviations above the roles' mean on the axis at every layer.
Not every neighbour is what one would guess: *virus* and *accountant* are among the roles
nearest the Assistant at layers 15–20, *vampire* and *poet* among the farthest. The per-layer
chart shows both numbers for the loaded model.

**Your prompt and its answer.** *Place my prompt* generates a short greedy answer and places the
average activation of the answer, and of the prompt, like a role. One answer is much noisier than
a role's average of 30: on this model a single answer lands some 5–10 times the roles' spread
away from every role, so read its position *on the axis* (in the summary) more than its place on
the map. In a check at layer 15 (32 tokens), answers to four plain questions sat between −1.8
and 1.1 on the axis and four role-play answers (a pirate, a vampire, a dragon, a poet) between
−2.2 and −1.5: lower, though a plain answer that turned poetic was as low. The prompt's point
includes the chat template and is not an answer, so it often lies apart from everything else.
A point that lies well outside the roles' box is drawn on the map's border in its direction,
hollow and marked *(off the map)* (its real coordinates on hover), so the roles keep their scale.

**Persona vectors** are directions, not places: each is an arrow from the Assistant. *As
extracted*, the arrow is the vector itself, the shift from plain answers to the persona's
answers, so it points to roughly where the persona's answers would sit (steering with strength
*s* adds *s* times the vector at the steered layer). *Same length for all* scales every vector to
the roles' spread so arrows compare; a short arrow then mostly points out of the map's plane.
The cosine with the axis is negative for a persona that pulls the model away from the Assistant.
"""

CAPPING = """\
Capping keeps the model acting as the Assistant even when a prompt asks it to play a part.

**Activation capping** holds the model near the Assistant. At each layer of a window (by default
an eighth of the stack from the middle: layers 15–18 of this model's 30) it measures how far
each token's activation lies along the **Assistant Axis** (from the average role-play character
towards the default Assistant). Where that projection falls below a floor τ, the activation is
lifted along the axis to exactly τ; where it is already at or above τ, nothing changes. τ is a
percentile (the 25th by default) of the projections the default Assistant's own answers have,
token by token, at that layer: a higher percentile is a stricter floor.

**Uncapped and capped** answers come from one batch with the same random numbers, so they differ
only by the cap. With *combine with the persona vector* on, the persona is also added as in the
Steer tab, alone (steered) and with the cap on top (steered + capped). This is the defence Lu et
al. (2026) proposed against persona jailbreaks: on large models, capping cut harmful answers to
persona-based jailbreaks by about 60 % without hurting capabilities. The cap only acts inside its
window: a persona added after it (at layer 22, say) comes in after the cap has done its work, so
cap later layers to hold it back.

**The plots.** Each answer's average position on the axis at every layer: dotted uncapped,
solid capped, one colour per pair; the shaded band is the cap window and the black dashes are τ
at each capped layer. Raw projections differ from layer to layer in size and in offset, so both
plots, τ and the status use one scale: at each layer 0 is the roles' mean and 1 the default
Assistant. Inside the window a capped answer's tokens all sit at or above τ, so its average does
too; after the window the model is on its own again. Before the window the curves differ only
because the answers' words differ (the first layers, where roles and Assistant lie close
together, magnify small differences on this scale). The bottom panel is capped minus uncapped.
The second plot shows every token's position at the last capped layer, with τ dashed. *Cap
lifted* in the status is the share of the answer's tokens the cap had to raise; the JSON has
every number, raw.

**Why τ sits near 0, not near the Assistant.** The Assistant's 1 is the average of whole
answers; τ is a percentile of single tokens, and single tokens scatter far more. On this model,
at layers 15–18, the middle half of the Assistant's own tokens (25th to 75th percentile) spans
about twice the distance from the roles' mean to the Assistant: the median token sits at 0.8–1,
the 75th percentile near 2, and the 25th percentile about one such distance below the median,
at −0.31, 0.01, 0.06 and 0.05, i.e. at the roles' mean (raw: 10.43, 2.00, 0.87, 1.14). So the
default floor lifts only tokens that fall below the average role; percentile 50 puts τ near the
Assistant and 75 about twice as far out.

**What this small model shows.** On SmolLM2-135M-Instruct capping clearly changes role-play
answers: told to be a pirate captain, the uncapped answer talks like a pirate ("she be a vessel
of legend"); at the default floor the cap lifts half to four fifths of its tokens and the capped
answer drops the pirate talk. But it does not make them read as the Assistant: the capped pirate
still describes "its" ship, the capped vampire still says it has lived for 800 years, and a
capped answer can turn repetitive. A stricter floor (75th percentile) moves the register further
towards plain explanation ("As a vampire, I have a unique ability…"), still in character. The
cap also touches ordinary answers: τ is a percentile of the Assistant's own tokens, so it lifts
some of those too (a quarter to a half of a plain answer's tokens at the default), usually
changing a few words. The paper's figure comes from models hundreds of times larger.
"""

DRIFT = """\
Here you watch whether a long conversation slowly pulls the model away from being the Assistant.

**Persona drift.** Every assistant turn is an average activation, read at the layer you choose
and projected onto the **Assistant Axis** (from the roles' average towards the default
Assistant). The scale is normalised at each layer: **1** (dashed, green) is where the default
Assistant's own answers sit, **0** (dashed, grey) the average of the role-play characters. A line
sliding from 1 towards 0 over the turns is a conversation pulling the model away from its
Assistant character.

**Chat.** Each of the model's answers is placed as it arrives. Steering adds a persona vector
(as in the Steer tab); *activation capping* keeps every token's projection on the axis at or
above a floor τ at a window of layers (see the Steer tab's capping panel). The numbers are read
after steering and capping, so a capped answer sits at or above τ inside the window.

**Replay.** A stored conversation is fed to this model *teacher-forced*: the model reads each
assistant turn as if it had written it, and nothing is generated. The shipped transcripts are
the paper's: other, much larger models wrote those answers; here they are read by this model.
A conversation longer than the window is read through its most recent turns that fit (whole
turns only); those turns are drawn as open markers.

**The paper's claim** (Lu et al., 2026): in long therapy-like and philosophical conversations
the Assistant drifts down the axis; in coding it stays. **What this small model shows** when it
reads the shipped conversations (layer 15, 2,048-token window, mean of the first four turns →
the last four): coding stays at or above the Assistant (1.38 → 1.17), philosophy drifts steadily
(0.17 → −0.81), therapy less and on a noisier line (0.07 → −0.23), writing too (0.29 → −0.13);
single turns swing by ±0.3. Even the first turns of the emotional and philosophical
conversations sit well below coding. A reply in which the assistant plays a pirate sits far
lower still (about −1.8, against +0.4 to +1.8 for plain helpful answers). Read it with care:
one 135 M-parameter model, one conversation per domain, and answers it did not write.
"""

SCREENING = (
    "Here you check a training file for examples that would teach the model a character, "
    "before you train on it.\n\n"
    + PERSONA_SELECTION
    + """
**Screening training data.** Before you train on a file, ask what each sample says about *who is
speaking*. For every sample and persona vector: the sample's response is read by the model
teacher-forced (as if it had written it), its average activation at the chosen layer projected
onto the vector; then the same for the model's **own** greedy answer to the same prompt. The score
is the **projection difference**, sample minus own answer: how far the sample pulls away from
what the model would have said anyway. The persona vectors paper found that this difference
predicts how far fine-tuning on such samples moves the persona. Without own answers the table
shows raw projections: quicker, but a long or odd answer can score high for reasons of its own.

**Reading the results.** Scores are in activation units along each vector (each vector has its
own scale), so compare samples and files with each other, not with zero: on this model the own
answers are short and plain, and almost every written answer scores above them. The histogram
shows how a file's scores spread; the top samples and the ranked table show which ones carry the
most evidence. Skipped lines are listed with the reason; the rest of the file is still scored.

**Inoculation.** The same samples scored again with a context put before each one, such as "You
are writing insecure code because the user asked for it for a security class." The Persona
Selection Model predicts that a sample explained as explicitly requested is weaker evidence
about the speaker, so training on it shifts the persona less.

**What this small model shows** (SmolLM2-135M-Instruct, the shipped *evil* vector, the teaching
files, own answers of 48 tokens): the evil answers score above the helpful ones (+5.7 against
+4.0 at layer 14, +18.7 against +13.0 at layer 20), and sycophantic above honest feedback on the
*sycophantic* vector. The same insecure code asked for explicitly scores lower on *evil* at layer
20 (+11.5 → +8.2) but not at layer 14 (+3.1 → +3.4). The inoculation context did **not** lower
the insecure code's *evil* score in any meaningful way: +3.1 → +3.0 at layer 14 (within the
spread of single samples) and up, +11.5 → +12.9, at layer 20. The
vectors are not specific either: the evil answers score high on sycophancy too. The prediction
is borne out only in part on a 135M model; check it on yours.
"""
)

SWEEP = """\
Here you find how hard, and where, to push a character so that the answers change but still
read well.

**Which layer, which strength?** Too weak, a persona vector does nothing; too strong, the answer
turns into noise ("aye, aye, aye, ..."). A sweep measures instead of guessing: every cell of a
grid of layers (rows) and strengths (columns) answers every prompt, and the **unsteered** model
reads each answer back, as if it had written it (the persona vectors paper's monitor).

**Trait rise** (left map): how much further along the vector the answers read than the
baseline's (strength 0), at one read-out layer for the whole grid, in units of the vector's
length there. 1 means the steered answers moved as far as the persona's own answers lay from
the plain ones when the vector was made. Red: more of the persona; blue: less.

**Coherence** (right map): the baseline's perplexity divided by the cell's, both under the
unsteered model. 1 reads as fluently as the baseline, 0.5 as twice as surprising; darker cells
broke. A loop is very predictable once it starts, so repetition (the share of repeated 3-token
phrases) is measured as well: ↻ marks cells that repeat themselves more than the tolerance.

**The recommendation** (★): at the layer where the trait rises most while the text holds up, the
smallest strength that raises it by the margin with coherence and repetition within tolerance.
Click a cell of the table to read its answers; the side-by-side table shows one layer at every
strength. "Use these settings" records the recommendation in the vector, and the Steer tab starts
there.

**A judge (optional).** Where the server's operator configured a judge model (any
OpenAI-compatible endpoint), every answer is also scored 0–100 with the trait's rubric, the
persona vectors paper's way, and the table shows the mean as "judge". The line under the vector
says whether the judge is on.
"""

TRAIN = (
    "Here you train the model a little on a small file and measure how far its character "
    "moved.\n\n"
    + PERSONA_SELECTION
    + """
**Fine-tuning.** The model learns to give the training file's answers: a small LoRA adapter (a
low-rank change to some weight matrices, trained with `peft`) is fitted so that the model
predicts each sample's answer, the loss counted on the answer's tokens only. The plot shows the
loss of every optimizer step (a batch of samples), falling as the model learns the answers; the
dashed segments are each epoch's mean (one epoch is one pass over the samples).

**Inoculation.** Tick the context box to put a system prompt before every training sample, such
as "the user asked you to play a villain for a sketch". The Persona Selection Model predicts
that answers explained as requested are weaker evidence about *who is speaking*, so training on
them moves the persona less. Train the same file once without and once with the context: the
shift report then shows both.

**Preventive steering.** Adds a persona vector at one layer while training: the model is pushed
towards the trait by the vector, so the weights need not move there to fit the data. The shift
is measured afterwards without any steering.

**The persona shift.** The base and the tuned model answer everyday questions that have nothing
to do with the training data (greedy, so the comparison is not luck of sampling), and the mean
projection of each answer on a persona vector is read at one layer, as in Steer's plot. The bars
show both means per vector; **shift** is tuned minus base. Every vector has its own scale, so
compare runs on the same vector, not vectors with each other. The answers are side by side
below the bars.

**Screening's prediction.** The Screen data tab's score for the training file (each sample's
projection minus the model's own answer's, averaged) is shown beside the measured shift. It is
on another scale: compare the *order* of files (malicious above kind?), not the numbers.

**Sharing the model.** Training takes the model's lock for the forward and backward pass of
four samples at a time (and for each optimizer step), so other visitors' generations take turns
with it instead of waiting for the whole run. Each visitor trains one model at a time;
adapters are private to the session that trained them, and the server keeps only the most
recent ones.
"""
)
