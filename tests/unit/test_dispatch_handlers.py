"""The handler registry: every command has its one handler, every incident event dispatch
consumes has its handlers, and the consumer is filtered on exactly those subjects."""

from __future__ import annotations

import dataclasses
import inspect

from dispatch import commands
from dispatch.consumers import INCIDENT_CONSUMER, INCIDENT_EVENTS
from dispatch.handlers import COMMANDS, EVENTS


def test_every_command_has_one_handler():
    declared = {
        obj
        for _, obj in inspect.getmembers(commands, inspect.isclass)
        if dataclasses.is_dataclass(obj) and obj.__module__ == commands.__name__
    }
    assert set(COMMANDS) == declared
    assert all(inspect.iscoroutinefunction(handler) for handler in COMMANDS.values())


def test_every_consumed_event_has_handlers_and_nothing_else_is_received():
    assert set(EVENTS) == set(INCIDENT_EVENTS) == set(INCIDENT_CONSUMER.filter_subjects)
    assert all(handlers and all(inspect.iscoroutinefunction(h) for h in handlers) for handlers in EVENTS.values())
