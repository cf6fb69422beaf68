"""How the worker uses Python's garbage collector.

A collection walks the objects it looks at and whatever they point to; on a worker holding many
customer states that is the single largest cost there is. With Python's defaults a full
collection (about a second per million objects on a small cloud core) ran every few batches,
and young collections every 50,000 allocations walked each batch's own objects while they were
still in use (measured in `tracker bench worker`'s main run: 4.9 s of collections in a worker
life of 34.6 CPU seconds; 1.25 s in the timed run with the pauses below and young collections
every 50,000; 0.05 s with GC_YOUNG as it is now).

- What the process keeps for its lifetime (modules, the app) is set aside at start.
- A batch's synchronous work runs with collections paused (``paused``): the records, dicts and
  lists it builds are freed by reference counting as it ends and never walked; what it keeps
  (new customer states) is left for a later collection.
- Young collections only once ``GC_YOUNG`` more objects are alive than at the last one; a full
  collection every ``GC_FULL_SECONDS``, on a timer (about half a second at 10,000 cached states).

Nothing is lost meanwhile: objects without reference cycles are freed as soon as they are
unused, whatever the collector does; cycles wait at most for the next collection.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Python counts tracked objects allocated less those freed: a young collection runs once a
# million more are alive than at the last one (a batch's survivors: new customer states). Below
# that only the timer's full collection runs.
GC_YOUNG = 1_000_000
GC_FULL_SECONDS = 60.0


def tune_gc() -> None:
    """Call once everything the process keeps for its lifetime is built."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 20, 2**31 - 1)  # no full collection but the timer's


@contextmanager
def paused() -> Iterator[None]:
    """No collection inside: for synchronous work only (no await), so nothing else runs with
    the collector off. Nested use is fine: only the outermost one turns it back on."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
