"""MMDS V2 tokens: TTL bounds, expiry on the monotonic clock, forgery and cross-VM replay."""

import base64

import pytest

from nodesvc.mmds.token import (MAX_TTL_SECONDS, MIN_TTL_SECONDS, InvalidTtl, TokenAuthority)


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_ttl_bounds():
    ta = TokenAuthority()
    assert (MIN_TTL_SECONDS, MAX_TTL_SECONDS) == (1, 21600)
    for ttl in (1, 21600):
        assert ta.is_valid(ta.generate(ttl))
    for ttl in (0, -1, 21601, 2**32):
        with pytest.raises(InvalidTtl, match="between 1 and 21600"):
            ta.generate(ttl)


def test_wire_format_is_firecrackers_size():
    tok = TokenAuthority().generate(60)
    assert len(tok) == 48 and len(base64.b64decode(tok)) == 12 + 8 + 16


def test_expiry_follows_the_clock():
    clock = Clock()
    ta = TokenAuthority(clock=clock)
    tok = ta.generate(2)
    assert ta.expiry_ms(tok) == 1002000
    clock.t = 1001.999
    assert ta.is_valid(tok)
    clock.t = 1002.0          # expiry must be strictly in the future
    assert not ta.is_valid(tok)
    assert ta.expiry_ms(tok) == 1002000  # authentic, just expired


def test_tokens_are_distinct():
    ta = TokenAuthority()
    assert len({ta.generate(60) for _ in range(100)}) == 100


def test_forged_and_tampered_tokens_are_rejected():
    clock = Clock()
    ta = TokenAuthority(clock=clock)
    tok = ta.generate(60)
    raw = bytearray(base64.b64decode(tok))
    for i in range(len(raw)):           # every bit position matters (tag covers iv and ct)
        bad = bytearray(raw)
        bad[i] ^= 0x01
        assert not ta.is_valid(base64.b64encode(bad).decode())
    # extending the expiry without the key: flip ciphertext bits -> tag fails
    assert not ta.is_valid(base64.b64encode(raw[:12] + bytes(8) + raw[20:]).decode())
    for junk in ("", "x", "!!!!", tok[:-4], tok + "AAAA", "A" * 71, tok + "\n", "é" * 10,
                 base64.b64encode(bytes(36)).decode()):
        assert not ta.is_valid(junk), junk


def test_other_vmm_or_other_vm_id_cannot_replay():
    clock = Clock()
    a = TokenAuthority("vm-a", clock=clock)
    b = TokenAuthority("vm-a", clock=clock)         # another VMM: another random key
    tok = a.generate(60)
    assert a.is_valid(tok) and not b.is_valid(tok)
    key = bytes(range(32))
    same_key = lambda n: key if n == 32 else bytes(n)   # noqa: E731  (pinned "randomness")
    x = TokenAuthority("vm-x", clock=clock, urandom=same_key)
    y = TokenAuthority("vm-y", clock=clock, urandom=same_key)
    tok = x.generate(60)
    assert x.is_valid(tok) and not y.is_valid(tok)  # the VM id is authenticated too


def test_key_rotates_after_2_32_minus_1_tokens():
    ta = TokenAuthority()
    old = ta.generate(60)
    ta.issued = 2**32 - 1
    new = ta.generate(60)
    assert ta.issued == 1 and ta.is_valid(new) and not ta.is_valid(old)


def test_randomness_is_drawn_only_at_start():
    calls = []

    def urandom(n):
        calls.append(n)
        return bytes(range(n))

    ta = TokenAuthority(urandom=urandom)
    toks = [ta.generate(60) for _ in range(50)]
    assert calls == [32] and len(set(toks)) == 50 and all(map(ta.is_valid, toks))
