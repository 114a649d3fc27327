"""Kafka's client logs, one line per kind of failure at most every REPEAT_EVERY seconds.

While a broker is away, aiokafka logs every failed attempt of every client (each connection, each
coordinator lookup, each metadata refresh): thousands of lines a minute, which buried the one
line that said why a test failed. Each kind of warning or error (one logger, one message
template) now goes through once, then once per REPEAT_EVERY seconds, saying how many like it
were held back meanwhile. Below WARNING nothing is held back.
"""

from __future__ import annotations

import logging
import threading
import time

REPEAT_EVERY = 30.0
KAFKA_LOGGERS = ("aiokafka",)


class RepeatLimiter(logging.Filter):
    def __init__(self, every: float = REPEAT_EVERY) -> None:
        super().__init__()
        self.every = every
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # kind -> (last let through, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(kind, (None, 0))
            if last is not None and now - last < self.every:
                self._seen[kind] = (last, held + 1)
                return False
            self._seen[kind] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in the last {now - (last or now):.0f}s)"
            record.args = None
        return True


_limiter = RepeatLimiter()


def limit_kafka_client_logs() -> None:
    """Put the limiter on aiokafka's loggers (idempotent). A logger filter sees only its own
    records, not its children's, so each of aiokafka's module loggers gets it."""
    names = [name for name in logging.Logger.manager.loggerDict if name.split(".")[0] in KAFKA_LOGGERS]
    for name in {*KAFKA_LOGGERS, *names}:
        logger = logging.getLogger(name)
        if _limiter not in logger.filters:
            logger.addFilter(_limiter)
