"""The real-daemon fixtures of tests/node, shared with the observability tests."""

from tests.node.conftest import daemons, pytest_runtest_makereport

__all__ = ["daemons", "pytest_runtest_makereport"]
