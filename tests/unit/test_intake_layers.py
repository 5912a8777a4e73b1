"""incident-intake speaks the shared vocabulary (open stages, participants). Where code
may live, and that the OpenAPI describes every answer, is checked for every service in test_layers.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from incident_intake.domain import OPEN_STAGES, Participant
from incident_intake.settings import IntakeSettings
from incident_intake.store import OPEN


def test_open_stages_in_the_store_come_from_the_vocabulary():
    assert sorted(OPEN) == sorted(s.value for s in OPEN_STAGES)


def test_required_participants_take_either_spelling(monkeypatch):
    monkeypatch.setenv("INTAKE_REQUIRED_PARTICIPANTS", '["dispatch", "public-notification", "notification"]')
    assert IntakeSettings().required_participants == [Participant.dispatch, Participant.notification]
    assert IntakeSettings(required_participants=["shelter-registry"]).required_participants == [Participant.shelter]


def test_an_unknown_participant_is_a_settings_error_naming_the_setting(monkeypatch):
    monkeypatch.setenv("INTAKE_REQUIRED_PARTICIPANTS", '["dispatch", "fire-brigade"]')
    with pytest.raises(ValidationError) as refused:
        IntakeSettings()
    text = str(refused.value)
    assert "INTAKE_REQUIRED_PARTICIPANTS" in text and "fire-brigade" in text and "public-notification" in text
