"""The events the core emits to hooks, for writing a subscriber of your own.

See :class:`Hooks` for how they are dispatched and ``wanted_events()``; every ``*Started`` is
followed by exactly one matching ``*Ended``, whatever the end.
"""

from ._hooks import ALL_EVENTS as ALL_EVENTS
from ._hooks import RUN_EVENTS as RUN_EVENTS
from ._hooks import BatchEnded as BatchEnded
from ._hooks import BatchStarted as BatchStarted
from ._hooks import Event as Event
from ._hooks import Hook as Hook
from ._hooks import Hooks as Hooks
from ._hooks import ModelCallEnded as ModelCallEnded
from ._hooks import ModelCallStarted as ModelCallStarted
from ._hooks import RunEnded as RunEnded
from ._hooks import RunStarted as RunStarted
from ._hooks import SubagentEnded as SubagentEnded
from ._hooks import SubagentStarted as SubagentStarted
from ._hooks import ToolCallEnded as ToolCallEnded
from ._hooks import ToolCallStarted as ToolCallStarted

__all__ = (
    "ALL_EVENTS",
    "RUN_EVENTS",
    "BatchEnded",
    "BatchStarted",
    "Event",
    "Hook",
    "Hooks",
    "ModelCallEnded",
    "ModelCallStarted",
    "RunEnded",
    "RunStarted",
    "SubagentEnded",
    "SubagentStarted",
    "ToolCallEnded",
    "ToolCallStarted",
)
