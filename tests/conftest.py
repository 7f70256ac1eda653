"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from altsieve.testcorpus.generator import TestCorpus, generate_corpus


@pytest.fixture(scope="session")
def corpus() -> TestCorpus:
    """The 100-pair noisy-web test corpus (every label at least once), fixed seed."""
    return generate_corpus(n_pairs=100, seed=0)
