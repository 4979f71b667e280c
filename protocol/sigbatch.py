"""Ed25519 checks of many signed messages in one call, with the GIL released once.

Checking one signature through PyNaCl releases the GIL and takes it back; with worker
threads beside a busy event loop each take-back waits for the GIL, so most of what a
thread adds per message is that hand-over, not the check. `open_many` hands a whole batch
to `protocol._sigbatch` (a small C loop compiled at install) that calls libsodium's
`crypto_sign_open` (PyNaCl's own copy) for each message. Where the compiled loop is
missing, the same checks run one by one through PyNaCl: same verdicts, only slower.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError, CryptoError

__all__ = ["COMPILED", "open_many", "open_many_pynacl"]

SIGNATURE_LEN = 64
PUBLIC_KEY_LEN = 32

try:
    import nacl._sodium as _sodium

    from protocol import _sigbatch  # type: ignore[attr-defined]

    _OPEN_FN = int(
        _sodium.ffi.cast("uintptr_t", _sodium.ffi.addressof(_sodium.lib, "crypto_sign_open"))
    )
    _ffi, _lib = _sigbatch.ffi, _sigbatch.lib
    COMPILED = True
except (ImportError, AttributeError):  # no compiler at install, or another PyNaCl layout
    COMPILED = False


def open_many_pynacl(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Whether each (signature, message, public key) verifies, one PyNaCl call each."""
    out = []
    for signature, message, key in items:
        try:
            crypto_sign_open(signature + message, key)
        except (BadSignatureError, CryptoError, ValueError, TypeError):
            out.append(False)
        else:
            out.append(True)
    return out


def open_many(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Whether each (signature, message, public key) verifies; one GIL release in all."""
    if not COMPILED or not items:
        return open_many_pynacl(items)
    for signature, _message, key in items:
        if len(signature) != SIGNATURE_LEN or len(key) != PUBLIC_KEY_LEN:
            return open_many_pynacl(items)  # PyNaCl's own errors for lengths it refuses
    n = len(items)
    signed = b"".join([part for sig, message, _key in items for part in (sig, message)])
    ends = list(accumulate(SIGNATURE_LEN + len(message) for _s, message, _k in items))
    keys = b"".join([key for _s, _m, key in items])
    longest = max(SIGNATURE_LEN + len(message) for _s, message, _k in items)
    scratch = _ffi.new("unsigned char[]", longest)
    results = _ffi.new("int[]", n)
    if _lib.sigbatch_open(_OPEN_FN, n, signed, ends, keys, scratch, results) == 0:
        return [True] * n
    return [code == 0 for code in results]
