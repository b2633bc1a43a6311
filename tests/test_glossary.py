"""The glossary and the teaching texts' plain first sentences (issue 24, item 3)."""

from __future__ import annotations

import re

import pytest

from persona_explorer.ui.shared import teaching
from persona_explorer.ui.shared.glossary import GLOSSARY, glossary_markdown

TEXTS = ("STEER", "EXTRACT", "LIBRARY", "PERSONA_SPACE", "CAPPING", "DRIFT", "SCREENING")
TEXTS += ("SWEEP", "TRAIN")
# The words the issue names, which a student meets before anything explains them.
REQUIRED = (
    "layer",
    "residual stream",
    "projection",
    "persona vector",
    "assistant axis",
    "τ",
    "teacher-forced",
    "cohen's d",
    "lora",
)


def test_every_term_a_student_meets_is_explained_once() -> None:
    terms = [term.lower() for term, _ in GLOSSARY]
    assert len(terms) == len(set(terms))
    for word in REQUIRED:
        assert any(word in term for term in terms), word
    for term, text in GLOSSARY:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
        assert 1 <= len(sentences) <= 3, (term, len(sentences))
    shown = glossary_markdown()
    assert all(f"**{term}**" in shown for term, _ in GLOSSARY)


@pytest.mark.parametrize("name", TEXTS)
def test_each_teaching_text_opens_with_one_plain_sentence(name: str) -> None:
    first = getattr(teaching, name).split("\n\n")[0]
    sentence = " ".join(first.split())
    assert sentence.endswith("."), sentence
    assert sentence.count(". ") == 0, "one sentence"
    assert len(sentence) <= 160, sentence
    assert "**" not in sentence and "*" not in sentence  # no emphasis, no defined terms
    jargon = ("residual", "projection", "vector", "layer", "cohen", "lora", "teacher-forced", "τ")
    assert not [w for w in jargon if w in sentence.lower()], sentence
