"""Shared fixtures: the local stack (Graph emulator, strict sync API receiver, Azurite) as
real servers on loopback."""

from __future__ import annotations

import pytest

from devstack.azurite import Azurite


@pytest.fixture(scope="session")
def azurite():
    az = Azurite().start()
    yield az
    az.stop()
