"""The test fixtures themselves: under CI nothing may be skipped for lack of infrastructure."""

from __future__ import annotations

import pytest

from ecs.testing import missing


def test_missing_infrastructure_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no PostgreSQL \(CI=true: nothing may be skipped\)"):
        missing("no PostgreSQL")


def test_missing_infrastructure_skips_on_a_developer_machine(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL"):
        missing("no PostgreSQL")
