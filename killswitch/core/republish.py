"""Whether a halt this daemon holds must be published again to the state topic.

A broker that lost its storage comes back with an empty state topic while the daemon
still guards the accounts it had latched: ``killswitch status`` and every daemon that
starts (or takes the account over) afterwards would not know the latch. The daemon
compares what it holds with the last record per account on the topic and publishes
again only what the topic lacks or has older. Pure: the caller reads the topic and
publishes.

The state model has no version counter; each record's ``since`` (when the latch was
set, or when it was lifted) orders the records of one account, and a halt widened by a
later kill keeps its ``since`` and only grows its scope.
"""

from __future__ import annotations

from killswitch.core.model import HaltState

__all__ = ["needs_republish"]


def needs_republish(held: HaltState, on_topic: HaltState | None) -> bool:
    """Whether ``held`` (a halt this daemon holds) must be published again, given
    ``on_topic``, the account's last record on the state topic (None: no record).

    - No record: the topic lost the halt; publish it.
    - A record newer than the halt (a release, or a halt set later): the topic is
      ahead of this daemon; publishing would overwrite it with a stale halt. Not.
    - A record older than the halt: the halt's own record was lost; publish.
    - The halt's own record (same ``since``): publish only if the halt's scope has
      grown beyond the record's (a widening's record was lost); a release at that
      same instant is left alone.
    """
    if not held.halted:
        return False
    if on_topic is None:
        return True
    if on_topic.since != held.since:
        return on_topic.since < held.since
    if not on_topic.halted:
        return False
    return on_topic.scope.widen(held.scope) != on_topic.scope
