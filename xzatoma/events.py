"""What a subscriber is told, for writing one of your own.

An :class:`Instrument` (subclass it, override what you need) receives the live
:class:`~xzatoma.Run`, :class:`ModelCall`, :class:`~xzatoma.ToolContext` and :class:`Batch`; a
plain function receives the event records below. See :class:`Hooks`; every ``*Started`` is
followed by exactly one matching ``*Ended``, whatever the end.
"""

from ._events import ALL_EVENTS as ALL_EVENTS
from ._events import RUN_EVENTS as RUN_EVENTS
from ._events import BatchEnded as BatchEnded
from ._events import BatchStarted as BatchStarted
from ._events import Event as Event
from ._events import ModelCallEnded as ModelCallEnded
from ._events import ModelCallStarted as ModelCallStarted
from ._events import RunEnded as RunEnded
from ._events import RunStarted as RunStarted
from ._events import SubagentEnded as SubagentEnded
from ._events import SubagentStarted as SubagentStarted
from ._events import ToolCallEnded as ToolCallEnded
from ._events import ToolCallStarted as ToolCallStarted
from ._hooks import Hook as Hook
from ._hooks import Hooks as Hooks
from ._hooks import Instrument as Instrument
from ._run import Batch as Batch
from ._run import ModelCall as ModelCall
from ._run import Run as Run

__all__ = (
    "ALL_EVENTS",
    "RUN_EVENTS",
    "Batch",
    "BatchEnded",
    "BatchStarted",
    "Event",
    "Hook",
    "Hooks",
    "Instrument",
    "ModelCall",
    "ModelCallEnded",
    "ModelCallStarted",
    "Run",
    "RunEnded",
    "RunStarted",
    "SubagentEnded",
    "SubagentStarted",
    "ToolCallEnded",
    "ToolCallStarted",
)

for _kind in ALL_EVENTS:  # the records are this module's (the rest are also in ``xzatoma``)
    _kind.__module__ = __name__
del _kind
