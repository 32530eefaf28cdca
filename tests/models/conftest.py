"""Fixtures for model tests: one tiny tokenizer per session, tiny models built from it."""

import pytest

from lit_edit.models.tiny import TINY_ARCHS, tiny_model, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tok():
    return tiny_tokenizer()


@pytest.fixture(params=TINY_ARCHS)
def tiny(request, tiny_tok):
    """(arch, model, tokenizer) for every tiny architecture."""
    model, tok = tiny_model(request.param, tokenizer=tiny_tok)
    return request.param, model, tok
