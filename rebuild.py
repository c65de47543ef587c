"""What a target's listing says: a rebuild of its state (Rebuilt), and for a budgeted target
the room and the other sources around ours (Survey).

Used by --rebuild-state and, automatically, by a run that finds its state missing, empty or
unreadable while the service holds indicators of ours: the tool then reads back before it sends,
so a lost state file never duplicates an indicator, never reuses a revoked STIX id and never gives
an object a second `created`. Each adapter reads its own listing into a Rebuilt.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

from state_store import StateRow


@dataclasses.dataclass
class Rebuilt:
    """What a listing says we own: rows, revoked ids per key, copies to delete, items not ours."""

    rows: list[StateRow] = dataclasses.field(default_factory=list)
    revoked: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    surplus: list[str] = dataclasses.field(default_factory=list)
    foreign: int = 0


class Survey(NamedTuple):
    """What a budgeted service holds beside ours: the room it has left for anyone's indicators,
    and the keys other sources hold (never sent: sending would take theirs over)."""

    room: int
    foreign: frozenset[str]
