"""Shared fixtures: the project's own pytest plugin (trickle_trio.testing)."""

pytest_plugins = ["trickle_trio.testing"]
