"""Warning categories, importable without numpy so ``-W`` filters resolve cheaply."""

from __future__ import annotations

import pytest


class SetolWarning(pytest.PytestWarning):
    """Base class of every warning pytest-setol emits.

    ``-W error::pytest_setol.SetolWarning`` turns warn-severity rules into
    failures.
    """


class SetolRuleWarning(SetolWarning):
    """A rule of severity ``warn`` was violated by a layer or the model."""


class SetolFitWarning(SetolWarning):
    """The power-law fit of a layer failed or is weak evidence."""
