"""The project's error base for refusals that are neither ValueError nor FileNotFoundError."""

__all__ = ["ProjectError"]


class ProjectError(Exception):
    """Base of the project's own errors outside ValueError / FileNotFoundError (e.g. ``StoreError``);
    every tool turns it into one ``error:`` line and exit code 2."""
