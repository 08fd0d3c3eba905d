"""The documents people read list what the code has: settings, routes, events."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.api.v1 import api
from app.config import Settings
from app.main import create_app  # noqa: F401  (registers every route module)
from app.wire import ServerEvent
from realtime.namespaces.main import commands
from realtime.namespaces.yjs import YjsEvent

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


@pytest.mark.parametrize("name", sorted(field.upper() for field in Settings.model_fields))
def test_every_setting_is_in_the_readme_table(name: str) -> None:
    assert f"| `{name}` |" in README


@pytest.mark.parametrize("route", sorted(f"{e.method} {api.prefix}{e.path}" for e in api.endpoints))
def test_every_rest_route_is_in_the_protocol(route: str) -> None:
    assert route in PROTOCOL


YJS_EVENTS = [YjsEvent.SYNC_STEP_1, YjsEvent.SYNC_UPDATE, YjsEvent.AWARENESS_UPDATE]


@pytest.mark.parametrize(
    "event", [*commands.names, *(event.value for event in ServerEvent), *YJS_EVENTS]
)
def test_every_socket_event_is_in_the_protocol(event: str) -> None:
    assert f"`{event}`" in PROTOCOL
