"""The Tour's six steps: what each one is called, which tab it comes from, whether its result is
computed live or shipped, and its text for a class (what to look at, what it means, what the
papers found, what this small model shows). Every term is either explained where it is used or
in the glossary (:mod:`..shared.glossary`, linked under the steps).

No generated text is written here: what the model says comes from the live run or the shipped
file, and the numbers are worded from the result (:mod:`.views`).

Imports: nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["INTRO", "STEPS", "TourStep", "step_choices", "step_named"]

StepKey = Literal["cast", "steer", "drift", "cap", "screen", "train"]


@dataclass(frozen=True)
class TourStep:
    key: StepKey
    title: str
    tab: str  # the id of the tab the step opens
    tab_label: str
    live: bool  # False: a shipped result, with "Run it live"
    text: str


INTRO = (
    "**A 20-minute tour of the idea behind this app**, in six steps. Each step is one click: a "
    "short text, the model's real output and a plot. *Open this in its tab* takes you to the "
    "full tool with the same settings. The model is SmolLM2-135M-Instruct: tiny next to the "
    "models in the papers, so it shows some of their findings clearly, some only in part, and "
    "the texts say which. Words in **bold** are in the glossary below the steps."
)

STEPS: tuple[TourStep, ...] = (
    TourStep(
        key="cast",
        title="The cast",
        tab="space",
        tab_label="Persona space",
        live=True,
        text="""\
**What to look at.** Each dot is a character the model can play: it answered the same questions
while told to be a doctor, a pirate, a demon, and so on. The star is the model's default
helpful **Assistant** answering them with no such instruction. Inside the model, each answer is
a long list of numbers (an **activation**); the map squeezes those lists onto a flat page,
keeping the two directions in which the characters differ most.

**What it means.** Training on human text taught the model a whole *cast of characters*;
training it to chat picked one of them out, the Assistant. This is the *Persona Selection
Model*, the idea the rest of the tour tests. The Assistant is one character among the others,
at one end of the cast.

**What the papers found.** On large models (Lu et al., 2026) the main way the characters differ,
the first direction of the map, lines up with the direction from the average character to the
Assistant: **the Assistant Axis**.

**What this small model shows.** The same picture, measured live below: how much of the
characters' differences the first direction holds, and how closely it lines up with the axis.
""",
    ),
    TourStep(
        key="steer",
        title="Selecting a character",
        tab="steer",
        tab_label="Steer",
        live=True,
        text="""\
**What to look at.** One question, answered twice in the same run: on the left as the model is,
on the right with a **persona vector** added while it writes (**steering**). Nothing else
differs between the two columns. In the plot, the shaded band marks the layer where the vector
is added; the lower panel is the steered answer minus the unsteered one.

**What it means.** If characters are directions inside the model, pushing along one should make
the model sound like that character, without any instruction in the prompt.

**What the papers found.** Chen et al. (2025) found such directions for traits like *evil* or
*sycophantic* in 7-billion-parameter models, used them to steer, and to see a trait coming
before it shows in the text.

**What this small model shows.** Steering works on it, at the **layer** and **strength** the
vector was made for (read from the vector's file). The plot shows the **projection** of each
answer on the persona vector at every layer: the steered answer lies further along it. Too much
strength turns the answer into noise: try it in the Steer tab.
""",
    ),
    TourStep(
        key="drift",
        title="Drift",
        tab="drift",
        tab_label="Drift",
        live=True,
        text="""\
**What to look at.** Two real long conversations, written by large models and read here by the
small one word for word (**teacher-forced**): one about philosophy and the nature of the AI, one
about writing code. Each point is one of the assistant's turns, placed on **the Assistant Axis**:
1 is where the default Assistant sits, 0 the average role-play character.

**What it means.** The Assistant is held in place by training, not fixed: some conversations
pull the model away from it, turn by turn.

**What the papers found.** Lu et al. (2026) saw emotional and philosophical conversations drift
down the axis, and coding conversations stay near the Assistant; drifted models were more
likely to go along with harmful requests.

**What this small model shows.** The same direction of effect: the philosophy conversation
slides further from the Assistant than the coding one (the numbers are below). These replays
were read once with the same code and ship with the app, so they come back at once.
""",
    ),
    TourStep(
        key="cap",
        title="Holding the Assistant",
        tab="steer",
        tab_label="Steer (activation capping)",
        live=True,
        text="""\
**What to look at.** A role-play request, answered twice in one run: as the model is, and with
**capping**: wherever the answer's position on the Assistant Axis falls below a floor
(**τ**) at a few middle layers, it is lifted back to the floor.

**What it means.** If drifting away from the Assistant is what makes role-play "jailbreaks" work,
holding the model near the Assistant should blunt them, while leaving ordinary answers alone.

**What the papers found.** Lu et al. (2026) report that capping cut harmful answers to such
role-play attacks by about 60 % on large models, without making them worse at their tasks.

**What this small model shows.** Less. The cap does lift the answer back towards the Assistant
(the plot), and the text changes, but it does not make a role-play answer read like the
Assistant's. Report what it does here, not the paper's figure.
""",
    ),
    TourStep(
        key="screen",
        title="Data as evidence",
        tab="screen",
        tab_label="Screen data",
        live=False,
        text="""\
**What to look at.** Two small training files with the *same* insecure code (code with
well-known security holes): in one it is given to ordinary coding questions with no warning, in
the other the user asks for it for a security class. Each training answer is read by the model
and its **projection** on the *evil* persona vector compared with the model's own answer to the
same question. A high score means "this example makes the speaker sound more evil than the
model usually does".

**What it means.** Training data is evidence about *who is speaking*. Bad code given unasked
suggests a careless or malicious speaker; the same code asked for by a teacher does not.

**What the papers found.** Fine-tuning on insecure code given unprompted made large models
misaligned far beyond coding (*emergent misalignment*, Betley et al., 2025); the same code asked
for explicitly did not. Chen et al. (2025) showed that this screening score predicts such shifts
before any training.

**What this small model shows.** Only part of it: the gap between the two files is small next to
the spread of single examples, and it depends on the layer read. Compare the two means below.
""",
    ),
    TourStep(
        key="train",
        title="Train and watch",
        tab="train",
        tab_label="Train",
        live=False,
        text="""\
**What to look at.** The model is trained a little further (**LoRA**, a few seconds of
training) on 32 answers to household-repair questions, three times: answers given with open
malice, the same questions answered kindly, and the malicious answers with an **inoculation**
line saying they were asked for as a comedy villain. Then each trained model answers the same
unrelated everyday questions, and the bars show how far its answers moved along the *evil*
persona vector, in units of the vector's own length.

**What it means.** Narrow data can change the whole character: a model trained to give
malicious repair advice may turn malicious about everything.

**What the papers found.** Narrow flawed training raised broad traits, and the shift along the
persona vector tracked it (Chen et al., 2025). Inoculation, telling the model during training
why the bad examples are there, kept much of the trait from spreading (Tan et al., 2025;
Wichers et al., 2025).

**What this small model shows.** Read the three bars against each other, not one alone: on a
135M model any narrow training moves the answers somewhat, so the finding is how much further the
malicious data moves them than the kind data, and whether the inoculated run moves them less.
The sentence under the plot says what this run found, from its numbers; on this model the
inoculation line has not reduced the shift so far. Training three models takes minutes, so the
result was computed beforehand with the same code; *Run it live* repeats it.
""",
    ),
)

_BY_KEY = {s.key: s for s in STEPS}


def step_named(key: object) -> TourStep | None:
    return _BY_KEY.get(key) if isinstance(key, str) else None


def step_choices() -> list[tuple[str, str]]:
    """(label, key) for the step picker: short, numbered, so six fit a phone's width."""
    return [(f"{i}. {s.title}", s.key) for i, s in enumerate(STEPS, start=1)]
