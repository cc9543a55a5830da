"""What a run did, in numbers: the counters the session JSON and the status reply carry.

Missing volumes and gaps are kept as ``[first, last]`` ranges, never as lists of every
index, so a hostile index costs nothing; logging of repeated events is capped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: Events of one kind (malformed, rejected, withheld, non-finite) logged one line each; later
#: ones are counted, and one line in :data:`LOG_EVERY` is logged.
LOGGED_REFUSALS = 20
LOG_EVERY = 100
#: Index ranges listed in a status reply (the session JSON lists them all).
MAX_LISTED_RANGES = 100


@dataclass
class Counters:
    """What happened during the run, reported in the session JSON and on request.

    Attributes
    ----------
    n_received : int
        Valid volume messages (duplicates included).
    n_processed : int
        Volumes processed and published.
    n_duplicates : int
        Volumes received again (dropped).
    n_malformed : int
        Messages refused by the protocol checks, on the volume and results channels.
    n_rejected : int
        Valid volumes the pipeline refused (wrong grid, unusable voxel values).
    n_nonfinite_volumes, n_nonfinite_voxels : int
        Processed volumes holding NaN or infinite voxels, and how many such voxels in all
        (set aside by the pipeline, recorded as received).
    n_withheld : int
        Feedback events published without a value (it was not a finite number).
    n_expected : int or None
        Volumes the bridge's end-of-run message announced.
    n_missing : int
        Volumes of ``0 .. n_expected - 1`` never received.
    gaps : list of [int, int]
        ``[first, last]`` index ranges skipped when a later volume arrived (some may have
        come afterwards, out of order).
    missing : list of [int, int]
        ``[first, last]`` index ranges of the volumes never received (at the end).
    """

    n_received: int = 0
    n_processed: int = 0
    n_duplicates: int = 0
    n_malformed: int = 0
    n_rejected: int = 0
    n_nonfinite_volumes: int = 0
    n_nonfinite_voxels: int = 0
    n_withheld: int = 0
    n_expected: int | None = None
    n_missing: int = 0
    gaps: list[list[int]] = field(default_factory=list)
    missing: list[list[int]] = field(default_factory=list)


def missing_ranges(seen: Iterable[int], n_expected: int) -> list[list[int]]:
    """Return the ``[first, last]`` ranges of the indices ``0 .. n_expected - 1`` not in ``seen``.

    Work and memory grow with ``seen``, never with ``n_expected``.
    """
    ranges, expected = [], 0
    for index in sorted(i for i in seen if i < n_expected):
        if index > expected:
            ranges.append([expected, index - 1])
        expected = index + 1
    if expected < n_expected:
        ranges.append([expected, n_expected - 1])
    return ranges


def describe_ranges(ranges: list[list[int]], limit: int = 5) -> str:
    """Write ranges as a short text: ``1-4, 6, 9-12`` (the first ``limit``, then ``...``)."""
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit])
    return text + (f", ... ({len(ranges)} ranges)" if len(ranges) > limit else "")


def should_log(count: int) -> bool:
    """Log the first :data:`LOGGED_REFUSALS` events of a kind, then one in :data:`LOG_EVERY`."""
    return count <= LOGGED_REFUSALS or count % LOG_EVERY == 0
