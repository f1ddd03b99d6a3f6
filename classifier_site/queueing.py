"""Putting a task on the broker, with the failure turned into a message for people."""

import logging
from typing import Any

from celery import Task

logger = logging.getLogger(__name__)


def publish(task: Task, *args: Any) -> str | None:
    """Send `task(*args)`; None when sent, else why not (the broker is down)."""
    try:
        task.delay(*args)
    except Exception as exc:  # kombu raises transport-specific errors when the broker is down
        logger.exception("could not publish %s%r", task.name, args)
        return f"Could not reach the task broker ({type(exc).__name__}): is it running?"
    return None
