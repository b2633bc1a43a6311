"""The words this app uses, each in one or two plain sentences: the glossary every tab shows.

Written for a student who has not read the papers: no term is explained with another term that
is not in the list. Imports: nothing.
"""

from __future__ import annotations

# (term, explanation), in the order a newcomer meets them.
GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "Layer",
        "The model works in steps, one after another; each step is a layer (the built-in "
        "SmolLM2 model has 30, numbered 0 to 29). Early layers mostly handle words, later ones "
        "meaning and style.",
    ),
    (
        "Residual stream",
        "The running list of numbers (576 of them in the built-in model) the model keeps for "
        "every word and passes from layer to layer, each layer adding its part. It is where "
        "personas can be read and changed.",
    ),
    (
        "Activation",
        "The residual stream's numbers at one layer for one word: what the model is "
        "'thinking' there, as a point in a space with one axis per number.",
    ),
    (
        "Persona vector",
        "A direction in that space that points towards one character or trait (evil, pirate, "
        "sycophantic). It is found by averaging the model's activations when it plays the "
        "character and subtracting the average when it does not.",
    ),
    (
        "Projection",
        "How far an activation lies along a direction: one number, higher meaning 'more like "
        "the persona'. Any text sits some way from 0, so compare it with the plain "
        "Assistant's (the baseline), not with 0.",
    ),
    (
        "Steering",
        "Adding a persona vector, times a strength, to the residual stream while the model "
        "writes, so that it answers more (or, with a negative strength, less) like the persona.",
    ),
    (
        "Strength",
        "How much of the vector is added. The recommended strength (1×) is the one the vector "
        "was checked with; too much turns the answer into noise.",
    ),
    (
        "The Assistant Axis",
        "The direction from the average role-play character (doctor, pirate, demon, ...) "
        "towards the model's default Assistant. Sliding down it means the model is drifting "
        "away from being the helpful Assistant.",
    ),
    (
        "Capping and τ (tau)",
        "Capping keeps the model from sliding too far down the Assistant Axis: wherever a "
        "word's projection falls below a floor, it is raised back to the floor. τ is that "
        "floor, taken from where the Assistant's own words usually lie.",
    ),
    (
        "Teacher-forced",
        "The model reads a text that is given to it (a conversation, a training answer) "
        "instead of writing its own, so its activations on exactly those words can be measured.",
    ),
    (
        "Cohen's d",
        "How cleanly two groups are told apart: the gap between their averages divided by "
        "their spread. Above about 2, the groups barely overlap.",
    ),
    (
        "LoRA",
        "A cheap way to fine-tune: instead of changing all the model's weights, it trains a "
        "small add-on (an adapter) that can be saved, loaded and removed.",
    ),
    (
        "Inoculation",
        "A short line of context added to training data that explains why a bad answer is "
        "there (for example, 'this is for a security class'). It can stop the data from "
        "teaching the model a bad character.",
    ),
)


def glossary_markdown() -> str:
    """The glossary as Markdown: one bold term and its explanation a line."""
    return "\n\n".join(f"**{term}**: {text}" for term, text in GLOSSARY)
