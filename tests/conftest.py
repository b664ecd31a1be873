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


@pytest.fixture(autouse=True)
def _fresh_secret_registry():
    """Each test registers its own secrets: one test's canary (say the password "secret")
    must not mask words in the next test's messages."""
    yield
    from shared.common.redact import forget_all

    forget_all()


@pytest.fixture
def receiver():
    """The strict sync API receiver with the suite's domains and credential (tests/stack.py)."""
    from devstack.sync_receiver import SyncReceiver
    from tests.stack import CREDENTIAL, DOMAINS

    rc = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    rc.start()
    yield rc
    rc.stop()


@pytest.fixture
def nasty_graph():
    """The Graph emulator serving the suite's nasty directory (tests/stack.py ``nasty_directory``)."""
    from devstack.graph_emulator import GraphEmulator
    from tests.stack import nasty_directory

    em = GraphEmulator(nasty_directory())
    em.start()
    yield em
    em.stop()
