"""Things the engine and the label scorer say once per process (a fallback, a limit),
however many engines a worker builds."""

from __future__ import annotations

import logging
import threading

_SAID: set[tuple[str, ...]] = set()
_LOCK = threading.Lock()


def warn_once(log: logging.Logger, key: tuple[str, ...], message: str, *args: object) -> None:
    """log.warning(message, *args), the first time `key` is seen in this process."""
    with _LOCK:
        if key in _SAID:
            return
        _SAID.add(key)
    log.warning(message, *args)


def forget() -> None:
    """Say everything again (tests)."""
    with _LOCK:
        _SAID.clear()
