"""API authentication for the hot path: token look-ups remembered for a few seconds."""

import threading
import time
from typing import Any

from rest_framework.authentication import TokenAuthentication

# A deleted token, or a deactivated user, stops working within this many seconds.
TOKEN_CACHE_SECONDS = 5.0
_MAX_ENTRIES = 10_000


class CachedTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, with each token's user remembered in this process
    for TOKEN_CACHE_SECONDS: the database query (about a millisecond with the ORM)
    is a large share of a prediction's budget. Unknown tokens are never remembered."""

    _known: dict[str, tuple[float, Any, Any]] = {}
    _lock = threading.Lock()

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        now = time.monotonic()
        hit = self._known.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        user, token = super().authenticate_credentials(key)  # raises for unknown keys and inactive users
        with self._lock:
            if len(self._known) >= _MAX_ENTRIES:
                self._known.clear()
            self._known[key] = (now + TOKEN_CACHE_SECONDS, user, token)
        return user, token

    @classmethod
    def forget(cls) -> None:
        with cls._lock:
            cls._known.clear()
