"""Rate limits counted once across every process: fixed windows in the shared "throttle"
cache (THROTTLE_CACHE_URL, by default the site's shared cache: files in VAR_DIR, Redis in
production), taken in leases.

A shared count costs about a millisecond (a Redis round trip, a file), most of a
prediction's budget, so a process does not pay it per request: it takes a lease of up to
1/LEASE_PARTS of the limit from the shared counter (one add-or-increment) and spends it
locally. The count is per user across all processes; the slack is at most one lease per
process, and limits under LEASE_PARTS requests are counted exactly, one by one.
"""

import threading
import time
from dataclasses import dataclass

from django.core.cache import caches

LEASE_PARTS = 100


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    wait: float  # seconds until the window turns


class _Leases:
    """What this process still holds of each (key, window): requests it may let through."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def spend(self, key: str) -> bool:
        with self._lock:
            if self._held.get(key, 0) > 0:
                self._held[key] -= 1
                return True
            return False

    def keep(self, key: str, count: int, window: int) -> None:
        with self._lock:
            if len(self._held) > 10_000:  # old windows' keys: drop them all, this window's leases with them
                self._held = {k: v for k, v in self._held.items() if k.endswith(f":{window}")}
            self._held[key] = count


_LEASES = _Leases()


def forget_leases() -> None:
    """Drop what this process holds (tests that reset a count in the shared cache)."""
    global _LEASES
    _LEASES = _Leases()


def parse_rate(rate: str | None) -> tuple[int | None, int]:
    """Requests and seconds of a rate like "1200/min"; "none" or empty: no limit.
    A ValueError for anything else (the `check` framework reports it at start-up)."""
    if not rate or rate.strip().lower() == "none":
        return None, 1
    count, _, period = rate.partition("/")
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(period.strip()[:1].lower())
    if not count.strip().isdigit() or seconds is None:
        raise ValueError(f"not a rate: {rate!r}")
    return int(count), seconds


def take_rate(scope: str, ident: object, rate: str | None) -> Verdict:
    """One request against a rate setting like "60/hour" ("none": no limit)."""
    limit, duration = parse_rate(rate)
    if limit is None:
        return Verdict(True, 0.0)
    return take(scope, ident, limit, duration)


def take(scope: str, ident: object, limit: int, duration: int) -> Verdict:
    """One request of `ident` in `scope` against `limit` per `duration` seconds."""
    now = time.time()
    window = int(now // duration)
    key = f"throttle:{scope}:{ident}:{window}"
    wait = (window + 1) * duration - now
    if _LEASES.spend(key):
        return Verdict(True, wait)
    lease = max(1, limit // LEASE_PARTS)
    total = _add(key, lease, duration)
    granted = min(lease, limit - (total - lease))  # what is left of the limit, up to a lease
    if granted <= 0:
        return Verdict(False, wait)
    _LEASES.keep(key, granted - 1, window)  # one of them is this request
    return Verdict(True, wait)


def _add(key: str, count: int, duration: int) -> int:
    counters = caches["throttle"]
    if counters.add(key, count, timeout=duration + 1):
        return count
    try:
        return counters.incr(key, count)
    except ValueError:  # expired between add and incr: a new window
        counters.add(key, count, timeout=duration + 1)
        return count


def import_allowed(user_id: object) -> Verdict:
    """Imports (page and API share one budget per user): IMPORT_THROTTLE_RATE."""
    from django.conf import settings

    return take_rate("import", user_id, settings.IMPORT_THROTTLE_RATE)
