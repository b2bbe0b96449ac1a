"""What one step of a processor came to; the loop decides what to do next from it."""

from __future__ import annotations

from enum import Enum


class Step(str, Enum):
    #: an item was processed and recorded
    done = "done"
    #: nothing to claim right now
    idle = "idle"
    #: another processor holds the lease
    busy = "busy"
    #: the service could not be reached; the item went back uncharged
    unreachable = "unreachable"
    #: the item was lost to another processor (lease expired meanwhile) or stopped
    released = "released"
