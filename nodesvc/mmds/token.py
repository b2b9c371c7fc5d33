"""MMDS V2 session tokens: unforgeable, expiring, bound to one VMM.

Firecracker seals the token's expiry (monotonic ms, u64 LE) with AES-256-GCM
under a key drawn at start, with AAD `microvmid=<id>`, and sends
base64(iv 12 | ciphertext 8 | tag 16). The standard library has no AES, so
the same construction is built from HMAC-SHA256 (an encrypt-then-MAC AEAD):
two keys derived from one 32-byte `os.urandom` secret; the expiry is XORed
with HMAC(k_enc, iv)[:8] and the tag is HMAC(k_mac, aad | iv | ct)[:16].
The wire format (48 base64 characters) and the rules are Firecracker's:
tokens longer than 70 characters are not even decoded, a token from another
VMM (other key) or another VM id (other AAD) fails the tag, and the key is
replaced after 2^32-1 tokens (invalidating the old ones).

Randomness is drawn once, at start (and at the rare re-key); IVs are a keyed PRF of
the token counter. The clock is the VMM's monotonic clock, so a token does not survive a host
reboot or a snapshot restored elsewhere — as in Firecracker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time
from typing import Callable

MIN_TTL_SECONDS, MAX_TTL_SECONDS = 1, 21600
PATH_TO_TOKEN = "/latest/api/token"
IV_LEN, PAYLOAD_LEN, TAG_LEN, KEY_LEN = 12, 8, 16, 32
TOKEN_LENGTH_LIMIT = 70
MAX_TOKENS_PER_KEY = 2**32 - 1
_U64 = struct.Struct("<Q")


class InvalidTtl(ValueError):
    def __init__(self, ttl: int):
        super().__init__(f"Invalid time to live value provided for token: {ttl}. Please provide "
                         f"a value between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}.")
        self.ttl = ttl


class TokenAuthority:
    def __init__(self, instance_id: str = "", *, clock: Callable[[], float] = time.monotonic,
                 urandom: Callable[[int], bytes] = os.urandom):
        self._clock, self._urandom = clock, urandom
        self.set_instance_id(instance_id)
        self._rekey()

    def set_instance_id(self, instance_id: str) -> None:
        self.aad = f"microvmid={instance_id}".encode()

    def _rekey(self) -> None:
        secret = self._urandom(KEY_LEN)
        self._k_enc = hmac.new(secret, b"nodesvc-mmds-enc", hashlib.sha256).digest()
        self._k_mac = hmac.new(secret, b"nodesvc-mmds-mac", hashlib.sha256).digest()
        self._k_iv = hmac.new(secret, b"nodesvc-mmds-iv", hashlib.sha256).digest()
        self.issued = 0

    def _iv(self) -> bytes:
        # unique per key (a counter) and unpredictable (a PRF of it): no randomness
        # needed after start, so a jailed VMM makes no getrandom calls per token
        return hmac.new(self._k_iv, _U64.pack(self.issued), hashlib.sha256).digest()[:IV_LEN]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _keystream(self, iv: bytes) -> bytes:
        return hmac.new(self._k_enc, iv, hashlib.sha256).digest()[:PAYLOAD_LEN]

    def _tag(self, iv: bytes, ct: bytes) -> bytes:
        return hmac.new(self._k_mac, self.aad + b"\0" + iv + ct, hashlib.sha256).digest()[:TAG_LEN]

    def generate(self, ttl_seconds: int) -> str:
        if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidTtl(ttl_seconds)
        if self.issued >= MAX_TOKENS_PER_KEY:
            self._rekey()
        expiry = self._now_ms() + ttl_seconds * 1000
        iv = self._iv()
        ct = bytes(a ^ b for a, b in zip(_U64.pack(expiry), self._keystream(iv)))
        self.issued += 1
        return base64.b64encode(iv + ct + self._tag(iv, ct)).decode("ascii")

    def expiry_ms(self, token: str) -> int | None:
        """The expiry sealed in `token`, or None if it is not one of ours."""
        if not isinstance(token, str) or len(token) > TOKEN_LENGTH_LIMIT:
            return None
        try:
            raw = base64.b64decode(token.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return None
        if len(raw) != IV_LEN + PAYLOAD_LEN + TAG_LEN:
            return None
        iv, ct, tag = raw[:IV_LEN], raw[IV_LEN:IV_LEN + PAYLOAD_LEN], raw[IV_LEN + PAYLOAD_LEN:]
        if not hmac.compare_digest(tag, self._tag(iv, ct)):
            return None
        return _U64.unpack(bytes(a ^ b for a, b in zip(ct, self._keystream(iv))))[0]

    def is_valid(self, token: str) -> bool:
        expiry = self.expiry_ms(token)
        return expiry is not None and expiry > self._now_ms()
