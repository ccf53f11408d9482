"""Time-ordered ids (ULID-style): 26 Crockford base32 characters that sort by creation time.

"Everything since the last cycle" is then a plain `id > ?` query. Ids made in the same
millisecond by one process stay ordered thanks to a monotonic random part.
"""
import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id() -> str:
    """A 26-character id: 48 bits of milliseconds, then 80 bits random (monotonic within a ms)."""
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand += 1
        else:
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        _last_ms = ms
        return _encode(ms, 10) + _encode(_last_rand, 16)
