"""The ``mpsender`` pytest plugin: the ``mpsender_events`` fixture.

Registered under the ``pytest11`` entry point, so pytest loads it wherever
mpsender is installed; ``-p no:mpsender`` turns it off. It imports nothing of
mpsender until a test asks for the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mpsender.testing import CapturedEvents

__all__ = ["mpsender_events"]


@pytest.fixture
def mpsender_events() -> Iterator[CapturedEvents]:
    """Everything the test tracks through mpsender, recorded instead of sent
    (see :func:`mpsender.testing.capture`)."""
    from mpsender.testing import capture

    with capture() as events:
        yield events
