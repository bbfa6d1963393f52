"""Bad-record accounting of the pipeline: reason categories, the rate-limited log, the
``data.max_bad_fraction`` rule, and the end-of-run summary of a run's data.

Every bad record is logged once with its path and reason, at indexing (reader errors, plan
index, too long) and at decoding (the first time it fails); each phase lists the first
:data:`MAX_LOGGED` and then only counts the rest (``stats()['bad_not_logged']``, the
summary). The counts per reason and per task go to ``metrics.jsonl`` / TensorBoard as
``data/bad_by_reason/<reason>`` and ``data/bad_by_task/<task>``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Mapping

from crab_jax.data.errors import BadRecordError

log = logging.getLogger("crab_jax.data")
MAX_LOGGED = 20      # bad records logged one by one per phase (indexing, decoding); the rest are counted
MIN_SEEN = 100       # decoded records before the running fraction may stop a run (rule 3 of BadRecordLimit)
Z_STOP = 5.0         # one-sided Wilson bound of rule 3: ~3e-7 false-stop chance per check


def bad_reason_key(e: BadRecordError) -> str:
    """A short category of a BadRecordError's reason (the keys of ``stats()['bad_by_reason']``)."""
    r = e.reason.lower()
    for key, words in (("missing_file", ("not found",)), ("empty_file", ("0 bytes", "empty")),
                       ("truncated", ("truncated",)), ("too_long", ("longer than", "more than its planned")),
                       ("too_many_media", ("data.frame_slots", "data.audio_slots")),
                       ("too_short", ("too short", "at least")),
                       ("undecodable", ("decod", "cannot open", "cannot read", "no video stream")),
                       ("annotation", ("missing field", "bad value", "json", "csv", "entry"))):
        if any(w in r for w in words):
            return key
    return "other"


def task_key(task: str | None, record_source: str) -> str:
    """The task a bad record counts for: its task, else its annotation file (``record_source``
    is ``"<annotation file>#<entry>"``; prepared data and unknown tasks)."""
    return task or record_source.partition("#")[0]


class BadRecordLog:
    """Logs bad records of one phase (``"indexing"`` / ``"decoding"``): the first ``limit`` one
    line each (path, reason, record, task), then one line saying the rest are only counted."""

    def __init__(self, phase: str, limit: int = MAX_LOGGED):
        self.phase, self.limit, self.logged, self.not_logged = phase, int(limit), 0, 0

    def __call__(self, record: str, path: str, reason: str, task: str) -> bool:
        """Logs one bad record (True), or only counts it past the limit (False)."""
        if self.logged < self.limit:
            self.logged += 1
            where = "" if record == path else f" (record {record})"
            log.warning("bad record at %s, skipped: %s: %s%s [task %s]", self.phase, path, reason, where, task)
            return True
        if not self.not_logged:
            log.warning("more bad records at %s are counted, not listed (data/bad_by_reason/*, the end-of-run "
                        "summary)", self.phase)
        self.not_logged += 1
        return False


def wilson_lower(bad: int, n: int, z: float = Z_STOP) -> float:
    """One-sided Wilson score lower bound of a binomial fraction ``bad / n`` (0 for ``n = 0``)."""
    if n <= 0:
        return 0.0
    p = bad / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


@dataclasses.dataclass(frozen=True)
class BadRecordLimit:
    """``data.max_bad_fraction`` judged against the whole dataset.

    ``total`` is the plan index's record count (usable + bad at indexing); ``usable`` the
    planned records. A run stops (:meth:`check`) when

    1. at start-up: ``index_bad / total > limit``;
    2. while decoding, for certain: ``(index_bad + distinct records that failed to decode) /
       total > limit`` (whatever the records not yet decoded hold);
    3. while decoding, by statistics, only during the first epoch of a shuffled plan (its
       records are then a random sample; later epochs repeat them and rule 2 is exact): once
       at least :data:`MIN_SEEN` records were decoded, when even the one-sided Wilson lower
       bound (z = :data:`Z_STOP`) of the decoding bad fraction ``p`` gives
       ``(index_bad + p * usable) / total > limit``.

    So a dataset under the limit never stops by rules 1-2 whatever its order, and by rule 3
    with a chance of ~3e-7 per batch; a 50 % bad one stops after about :data:`MIN_SEEN`
    records (shuffled) or after ``limit * total`` bad ones (not shuffled).
    """

    limit: float
    total: int
    usable: int
    shuffled: bool

    def _over(self, bad: float, phase: str, detail: str) -> str | None:
        if self.total and bad / self.total > self.limit:
            return (f"{detail} during {phase}: {bad / self.total:.1%} of the {self.total} records > "
                    f"data.max_bad_fraction={self.limit:.1%}")
        return None

    def check(self, index_bad: int, distinct_bad: int = 0, seen: int = 0, bad: int = 0,
              first_epoch: bool = True) -> str | None:
        """Why the run must stop (None: it goes on); ``seen`` / ``bad``: decoded records so far."""
        if not seen:
            return self._over(index_bad, "plan index", f"{index_bad} of {self.total} records bad")
        why = self._over(index_bad + distinct_bad, "decoding",
                         f"{index_bad} bad at indexing + {distinct_bad} failed to decode")
        if why or not (self.shuffled and first_epoch and seen >= MIN_SEEN):
            return why
        low = wilson_lower(bad, seen)
        return self._over(index_bad + low * self.usable, "decoding",
                          f"{bad} of the first {seen} decoded records bad (at least {low:.1%} at z={Z_STOP:g})")


def summary_lines(stats: Mapping) -> list[str]:
    """The data part of the end-of-run summary, from a pipeline's ``stats()``."""
    lines = [f"data: {stats.get('seen', 0)} record(s) decoded, {stats.get('bad', 0)} failed to decode, "
             f"{stats.get('index_bad', 0)} bad at indexing"]
    for name, key in (("reason", "bad_by_reason"), ("task", "bad_by_task")):
        counts = stats.get(key) or {}
        if counts:
            lines.append(f"  bad records by {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if stats.get("bad_not_logged"):
        lines.append(f"  {stats['bad_not_logged']} bad record(s) counted but not listed in the log")
    notes = stats.get("skipped_file_notes") or []
    if notes:
        lines.append(f"  {len(notes)} annotation file(s) skipped (data.skip_bad_files):")
        lines += [f"    {n}" for n in notes]
    return lines
