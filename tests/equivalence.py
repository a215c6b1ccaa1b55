"""Shared by the property tests that compare a faster implementation with the one it replaced."""

from __future__ import annotations

from hypothesis import settings


def outcome(function, *args):
    """What a call gives: its result, or the type, args and text of what it raised."""
    try:
        return "result", function(*args)
    except Exception as error:  # whatever it is, compared between the implementations
        return "error", type(error), error.args, str(error)


# Pure functions, microseconds a call: far more examples than the ci fuzz profile gives a test.
EQUIVALENCE = settings(max_examples=500, deadline=None)
