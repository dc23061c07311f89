"""Fixtures of the widget tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def notifications():
    """Messages napari shows to the user during the test, as (severity, text)."""
    from napari.utils.notifications import notification_manager

    seen = []

    def record(notification):
        seen.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)
