"""Sampling draws from the nucleus distribution exactly, with or without the full sort."""

from __future__ import annotations

import pytest
import torch

from persona_explorer.steering.generation import _NUCLEUS_CANDIDATES, SamplingConfig, _sample


def nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    scores = logits / temperature
    srt, order = scores.sort(-1, descending=True)
    p = srt.softmax(-1)
    keep = (p.cumsum(-1) - p) < top_p
    q = torch.where(keep, p, torch.zeros_like(p))
    return torch.zeros_like(q).scatter(-1, order, q / q.sum(-1, keepdim=True))


@pytest.mark.parametrize(
    ("vocab", "scale"),
    [(1000, 3.0), (4 * _NUCLEUS_CANDIDATES, 0.05)],  # peaked; flat enough to need the full sort
    ids=["candidates", "full-sort"],
)
@pytest.mark.parametrize("shared", [False, True])
def test_sampling_matches_the_nucleus_distribution(vocab: int, scale: float, shared: bool) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, vocab) * scale
    cfg = SamplingConfig(temperature=0.8, top_p=0.9, shared_noise=shared)
    gen = torch.Generator().manual_seed(1)
    n = 3000
    counts = torch.zeros(2, vocab)
    for _ in range(n):
        counts[torch.arange(2), _sample(logits, cfg, gen)] += 1
    ref = nucleus(logits, 0.8, 0.9)
    assert bool(((counts > 0) <= (ref > 0)).all()), "sampled a token outside the nucleus"
    # Each probability within 5 standard errors of its estimate.
    se = (ref * (1 - ref) / n).sqrt() + 1e-3
    assert bool(((counts / n - ref).abs() <= 5 * se).all())


def test_shared_noise_picks_alike_for_identical_rows() -> None:
    logits = torch.randn(1, 3000).repeat(4, 1)
    cfg = SamplingConfig(temperature=1.0, top_p=0.95, shared_noise=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        picks = _sample(logits, cfg, gen)
        assert bool((picks == picks[0]).all())
