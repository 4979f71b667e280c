"""cffi build script for `protocol._sigbatch`: many Ed25519 checks in one call.

Compiled when the package is installed (setup.py's `cffi_modules`). It holds no
cryptography of its own: the loop calls libsodium's `crypto_sign_open` as bundled in
PyNaCl, through a function pointer taken from PyNaCl at run time, so a message is
accepted or refused by exactly the code that checks single messages.
"""

from __future__ import annotations

import cffi

CDEF = """
int sigbatch_open(uintptr_t open_fn, size_t n, const unsigned char *sms,
                  const unsigned long long *ends, const unsigned char *pks,
                  unsigned char *scratch, int *results);
"""

SOURCE = r"""
#include <stddef.h>
#include <stdint.h>

typedef int (*open_fn_t)(unsigned char *, unsigned long long *, const unsigned char *,
                         unsigned long long, const unsigned char *);

/* Signed messages sms (signature || message, one after another; ends[i] is where the
   i-th ends), public keys pks (32 bytes each): results[i] is what crypto_sign_open
   returned (0 when the signature is good). cffi releases the GIL around this call, so
   the whole batch costs one release and one reacquire instead of one per message. */
static int sigbatch_open(uintptr_t open_fn, size_t n, const unsigned char *sms,
                         const unsigned long long *ends, const unsigned char *pks,
                         unsigned char *scratch, int *results) {
    open_fn_t fn = (open_fn_t)open_fn;
    unsigned long long start = 0, mlen = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        results[i] = fn(scratch, &mlen, sms + start, ends[i] - start, pks + 32 * i);
        bad += results[i] != 0;
        start = ends[i];
    }
    return bad;
}
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)
ffi.set_source("protocol._sigbatch", SOURCE)

if __name__ == "__main__":
    ffi.compile(verbose=True)
