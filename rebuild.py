"""What a rebuild of a target's state recovers from the service's own listing.

Used by --rebuild-state and, automatically, by a run that finds its state missing, empty or
unreadable while the service holds indicators of ours: the tool then reads back before it sends,
so a lost state file never duplicates an indicator, never reuses a revoked STIX id and never gives
an object a second `created`. Each adapter reads its own listing into a Rebuilt.
"""
from __future__ import annotations

import dataclasses

from state_store import StateRow


@dataclasses.dataclass
class Rebuilt:
    """What a listing says we own: rows, revoked ids per key, copies to delete, items not ours."""

    rows: list[StateRow] = dataclasses.field(default_factory=list)
    revoked: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    surplus: list[str] = dataclasses.field(default_factory=list)
    foreign: int = 0
