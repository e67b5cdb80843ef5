"""The acoustic stage's token corpus, for the exported stages' round trips."""

from tests.acoustic.conftest import token_corpus  # noqa: F401 - a fixture, used by name
