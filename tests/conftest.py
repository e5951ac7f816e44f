"""The suite's fixtures live in ``tests/support/fixtures.py`` (helpers in ``tests/support``);
test modules import helpers from there, never from a conftest or another test module."""

pytest_plugins = ["tests.support.fixtures"]
