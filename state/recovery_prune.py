"""Pruning the rows Bytewax keeps for discarded keys from its recovery partitions.

When a keyed stateful step discards a key, Bytewax 0.21 writes a row in the partition's
``snaps`` table (``step_id, state_key, snap_epoch, ser_change``) with ``ser_change`` NULL,
named by the key. Its garbage collection, run at each commit, deletes a key's rows older
than the newest one at or below the commit epoch, and keeps that newest row: the tombstone
stays for good. For rule_triggers and attribution the key is a customer id, so an erased
customer's id (issue 17) would live on in every recovery database that ever held it.

A tombstone can go when it is its key's only row in its file and not newer than the file's
commit epoch, because then no resume reads it any differently from no row at all:

- Bytewax loads, for each ``(step_id, state_key)``, the row with the greatest
  ``snap_epoch`` below the resume epoch (``WITH max_epoch_snaps AS (SELECT step_id,
  state_key, MAX(snap_epoch) ... WHERE snap_epoch < ?1 GROUP BY step_id, state_key)``),
  and a NULL ``ser_change`` is loaded as a discard: the key has no state. A lone tombstone
  gives "no state" for a resume above its epoch, and no row at all for one at or below it;
  without it every resume finds no row: "no state" again.
- Every row of a key is in one file: Bytewax routes each snapshot to a partition by a hash
  of ``(step_id, state_key)`` (``recovery_snap_writer``, SeaHasher) over a partition count
  fixed when the partitions are made (``omnistream.runner.prepare_recovery``).
- At or below the commit epoch, nothing newer can be shadowed: a later execution resumes
  above that epoch, so it writes the key's next rows at later epochs, and the newest row
  wins. (A tombstone above the commit epoch, from an epoch a resume may replay, is left to
  Bytewax.)

This runs before a flow process opens its partitions (no Bytewax process has them open), so
an erased id leaves the recovery databases at the next start after Bytewax's own garbage
collection has made its tombstone the key's only row. A partition it deleted rows from is
rewritten (``VACUUM``): the bytes of deleted rows, Bytewax's included, do not stay in the
file's free pages. That costs a copy of the file at start, only when something was pruned.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds to wait for a partition another process holds locked before leaving it as it is.
LOCK_WAIT_S = 2.0

#: The lone tombstones at or below the file's commit epoch (see the module docstring).
PRUNE_LONE_TOMBSTONES = """
DELETE FROM snaps
WHERE ser_change IS NULL
  AND snap_epoch <= (SELECT MAX(commit_epoch) FROM commits)
  AND NOT EXISTS (
      SELECT 1 FROM snaps AS other
      WHERE other.step_id = snaps.step_id
        AND other.state_key = snaps.state_key
        AND other.snap_epoch <> snaps.snap_epoch
  )
"""


@dataclass
class PruneResult:
    """What pruning a recovery directory did: rows deleted, and the partitions left alone
    (name and reason) because they could not be opened or written."""

    pruned: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def prune_partition(path: Path, lock_wait_s: float = LOCK_WAIT_S) -> int:
    """Delete the lone tombstones of one partition file; the number deleted.

    Raises ``sqlite3.Error`` for a file that is missing (it is not created), locked for
    longer than ``lock_wait_s``, or not a recovery partition."""
    uri = f"file:{path}?mode=rw"
    with closing(sqlite3.connect(uri, uri=True, timeout=lock_wait_s)) as db:
        with db:  # one transaction: all of the file's tombstones or none
            deleted = db.execute(PRUNE_LONE_TOMBSTONES).rowcount
        if deleted > 0:
            # Deleted rows stay in the file's free pages, as do those Bytewax's garbage
            # collection deleted before (a discarded key's earlier states, pickled): the
            # file is rewritten without them, and the rewrite folded out of the WAL.
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return max(deleted, 0)


def prune_recovery_dir(directory: Path, lock_wait_s: float = LOCK_WAIT_S) -> PruneResult:
    """Prune every partition (``part-*.sqlite3``) in ``directory``; logs one line for the
    directory, and one for each partition left alone, never a traceback: pruning only
    saves space and forgets ids, so a partition that cannot be pruned is left for Bytewax
    to report (or to resume from) as it would have without this step."""
    result = PruneResult()
    if not directory.is_dir():
        log.warning("recovery: %s not pruned: no such directory", directory)
        result.skipped.append((str(directory), "no such directory"))
        return result
    for part in sorted(directory.glob("part-*.sqlite3")):
        try:
            result.pruned += prune_partition(part, lock_wait_s)
        except sqlite3.Error as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("recovery: %s not pruned: %s", part, reason)
            result.skipped.append((part.name, reason))
    log.info(
        "recovery: pruned %d row(s) of discarded keys from %s",
        result.pruned,
        directory,
    )
    return result
