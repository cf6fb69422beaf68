"""Structured logging: one line per event, ``key=value`` pairs after a fixed prefix."""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable

# While a broker is down, aiokafka logs the same refused connection or metadata error about ten
# times a second, per client. One line per kind of message per this many seconds is enough.
REPEAT_SECONDS = 10.0


class RepeatLimiter(logging.Filter):
    """Lets through one record per (logger, message) every ``seconds`` from the loggers under
    ``prefixes``; the next one let through says how many were held back (``repeated=N``).

    Records are told apart by their message before formatting, so the same error about another
    node or with another reason still counts as a repeat. At most ``keys`` kinds are tracked.
    """

    def __init__(
        self,
        prefixes: tuple[str, ...],
        seconds: float = REPEAT_SECONDS,
        *,
        keys: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.seconds = seconds
        self.keys = keys
        self.clock = clock
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.seconds:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        if len(self._seen) > self.keys:
            self._seen.popitem(last=False)
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} repeated={seen[1]} in_seconds={now - seen[0]:.0f}"
        return True


def configure(level: str = "info", *, process: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s level=%(levelname)s process={process} logger=%(name)s %(message)s",
        force=True,
    )
    # Faust and mode narrate every service start and stop at INFO; aiokafka logs each refused
    # connection at ERROR while a broker restarts. Keep their warnings, not their chatter.
    quiet = max(logging.WARNING, logging.getLogger().level)
    for name in ("faust", "mode", "aiokafka"):
        logging.getLogger(name).setLevel(quiet)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatLimiter(("aiokafka",)))
