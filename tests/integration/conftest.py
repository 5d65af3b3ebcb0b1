"""Fixtures shared by the live tests; each module brings its own `stack` (tests.support.stack)."""

from __future__ import annotations

import pytest

from tests.support.stack import Stack


@pytest.fixture(scope="module")
def alice(stack: Stack) -> str:
    """A token of a plain user, alice, on the module's stack."""
    with stack.admin() as c:
        return str(c.add_user("alice")["token"])


@pytest.fixture(scope="module")
def bob(stack: Stack) -> str:
    """A token of a plain user, bob, on the module's stack."""
    with stack.admin() as c:
        return str(c.add_user("bob")["token"])
