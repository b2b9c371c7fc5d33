"""Core side of the rate-limiter plugin point: config parsing, kind lookup, device helpers."""

import pytest

from nodesvc.plugins import PluginManager, hookimpl
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.ratelimit import (
    DEFAULT_KIND, RateLimiter, TokenType, build_rate_limiter, consume_op,
    limiter_builder, parse_limiter_config, replenish_op,
)

BW = {"size": 1024, "one_time_burst": 0, "refill_time": 100}


# --- parse_limiter_config -----------------------------------------------------------

def test_parse_full_config_round_trips():
    cfg = {"bandwidth": {"size": 1048576, "one_time_burst": 4096, "refill_time": 1000},
           "ops": {"size": 100, "refill_time": 1000}, "kind": "token-bucket"}
    parsed = parse_limiter_config(cfg)
    assert parsed == {"kind": "token-bucket",
                      "bandwidth": {"size": 1048576, "one_time_burst": 4096, "refill_time": 1000},
                      "ops": {"size": 100, "one_time_burst": 0, "refill_time": 1000}}
    assert parse_limiter_config(parsed) == parsed


@pytest.mark.parametrize("cfg", [None, {}, {"bandwidth": None, "ops": None}])
def test_parse_absent_is_empty(cfg):
    assert parse_limiter_config(cfg) == {}


def test_parse_null_bucket_and_burst_are_absent():
    parsed = parse_limiter_config({"bandwidth": None,
                                   "ops": {"size": 5, "refill_time": 10, "one_time_burst": None}})
    assert parsed == {"ops": {"size": 5, "one_time_burst": 0, "refill_time": 10}}


def test_parse_zero_is_valid_it_disables():
    assert parse_limiter_config({"ops": {"size": 0, "refill_time": 0}})["ops"]["size"] == 0


@pytest.mark.parametrize("cfg, message", [
    ([], "rate_limiter: must be an object"),
    ({"bandwith": BW}, "rate_limiter.bandwith: unknown key; allowed: bandwidth, ops, kind"),
    ({"ops": {**BW, "burst": 1}}, "rate_limiter.ops.burst: unknown key"),
    ({"ops": 5}, "rate_limiter.ops: must be an object"),
    ({"ops": {"refill_time": 10}}, "rate_limiter.ops.size: required key is missing"),
    ({"bandwidth": {"size": 10}}, "rate_limiter.bandwidth.refill_time: required key is missing"),
    ({"bandwidth": {**BW, "size": -1}}, "rate_limiter.bandwidth.size: must be between 0 and"),
    ({"bandwidth": {**BW, "one_time_burst": -5}}, "rate_limiter.bandwidth.one_time_burst: must be between"),
    ({"bandwidth": {**BW, "refill_time": True}}, "rate_limiter.bandwidth.refill_time: must be an integer"),
    ({"bandwidth": {**BW, "size": "1024"}}, "rate_limiter.bandwidth.size: must be an integer"),
    ({"bandwidth": {**BW, "size": 1.5}}, "rate_limiter.bandwidth.size: must be an integer"),
    ({"bandwidth": {**BW, "size": 2**64}}, "rate_limiter.bandwidth.size: must be between 0 and"),
    ({"ops": {**BW, "refill_time": 2**63}}, "rate_limiter.ops.refill_time: must be between 0 and"),
    ({"kind": ""}, "rate_limiter.kind: must be a non-empty string"),
    ({"kind": 3}, "rate_limiter.kind: must be a non-empty string"),
])
def test_parse_errors_name_the_key_path_on_one_line(cfg, message):
    with pytest.raises(ConfigError) as exc:
        parse_limiter_config(cfg)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_parse_error_uses_callers_path():
    with pytest.raises(ConfigError, match=r"^drives\[0\]\.rate_limiter\.ops\.size: "):
        parse_limiter_config({"ops": {"size": -1, "refill_time": 1}}, "drives[0].rate_limiter")


# --- build_rate_limiter and kinds ---------------------------------------------------

class AlwaysAllow:
    """A third-party limiter: the whole contract, no limiting."""

    def __init__(self, config, event_loop):
        self.config, self.event_loop, self.closed = config, event_loop, False

    blocked = False

    def consume(self, tokens, token_type):
        return True

    def manual_replenish(self, tokens, token_type):
        pass

    def set_wakeup(self, callback):
        pass

    def update(self, config):
        self.config = config

    def close(self):
        self.closed = True


class VendorLimiters:
    @hookimpl
    def register_rate_limiters(self, registry):
        registry.add("always-allow", AlwaysAllow)


@pytest.fixture(scope="module")
def registry():
    pm = PluginManager()             # entry points: the token-bucket distribution
    pm.register(VendorLimiters(), "vendor-limiters")
    return pm.rate_limiter_registry()


def test_token_bucket_plugin_loads_through_entry_points():
    pm = PluginManager()
    info = {p.name: p for p in pm.plugins()}
    if "token_bucket" not in info:
        pytest.fail("nodesvc-token-bucket is not installed (pip install -e plugins/token_bucket)")
    assert info["token_bucket"].distribution == "nodesvc-token-bucket"
    reg = pm.rate_limiter_registry()
    assert DEFAULT_KIND in reg.kinds()
    assert {r.kind: r.plugin for r in reg.registrations()}[DEFAULT_KIND] == "token_bucket"


def test_blocking_the_plugin_removes_the_kind(monkeypatch):
    monkeypatch.setenv("NODESVC_BLOCK_PLUGINS", "token_bucket")
    reg = PluginManager().rate_limiter_registry()
    with pytest.raises(ConfigError, match=r"^rate_limiter\.kind: no loaded plugin provides "
                                          r"rate-limiter kind 'token-bucket' \(known: none\)$"):
        build_rate_limiter(reg, {"ops": BW}, None)


@pytest.mark.parametrize("cfg", [None, {}, {"bandwidth": None}])
def test_absent_or_empty_config_builds_nothing(registry, cfg):
    assert build_rate_limiter(registry, cfg, None) is None


def test_default_kind_is_token_bucket(registry):
    from nodesvc_token_bucket import TokenBucketLimiter
    lim = build_rate_limiter(registry, {"bandwidth": BW}, None)
    try:
        assert isinstance(lim, TokenBucketLimiter)
        assert isinstance(lim, RateLimiter)      # satisfies the runtime-checkable Protocol
        assert lim.bucket(TokenType.BYTES).size == 1024
    finally:
        lim.close()


def test_explicit_kind_without_buckets_still_builds(registry):
    lim = build_rate_limiter(registry, {"kind": "token-bucket"}, None)
    try:
        assert lim is not None and lim.consume(10**9, TokenType.BYTES)
    finally:
        lim.close()


def test_third_party_kind_is_selected_by_kind(registry):
    loop = object()
    lim = build_rate_limiter(registry, {"kind": "always-allow", "ops": BW}, loop)
    assert isinstance(lim, AlwaysAllow) and isinstance(lim, RateLimiter)
    assert lim.event_loop is loop
    assert lim.config == {"kind": "always-allow", "ops": BW}    # parsed before the plugin sees it
    assert consume_op(lim, 10**12)


def test_unknown_kind_is_a_config_error_listing_known(registry):
    with pytest.raises(ConfigError, match=r"^net\.rx_rate_limiter\.kind: no loaded plugin provides "
                                          r"rate-limiter kind 'leaky' \(known: always-allow, token-bucket\)"):
        build_rate_limiter(registry, {"kind": "leaky"}, None, path="net.rx_rate_limiter")


def test_invalid_config_fails_before_the_plugin_is_called(registry):
    with pytest.raises(ConfigError, match="rate_limiter.ops.size"):
        build_rate_limiter(registry, {"kind": "always-allow", "ops": {"size": -1, "refill_time": 1}}, None)


def test_limiter_builder_is_the_device_context_callable(registry):
    build = limiter_builder(registry, event_loop=None)
    assert build(None) is None
    assert isinstance(build({"kind": "always-allow"}), AlwaysAllow)
    with pytest.raises(ConfigError, match=r"^drives\[1\]\.rate_limiter\.kind"):
        build({"kind": "nope"}, path="drives[1].rate_limiter")


# --- device helpers -----------------------------------------------------------------

class Ledger:
    """Records calls; refuses bytes beyond `bytes_left`."""

    def __init__(self, bytes_left):
        self.bytes_left, self.ops = bytes_left, 0
        self.calls = []

    def consume(self, tokens, token_type):
        self.calls.append(("consume", tokens, token_type))
        if token_type is TokenType.OPS:
            self.ops += tokens
            return True
        if tokens > self.bytes_left:
            return False
        self.bytes_left -= tokens
        return True

    def manual_replenish(self, tokens, token_type):
        self.calls.append(("replenish", tokens, token_type))
        if token_type is TokenType.OPS:
            self.ops -= tokens
        else:
            self.bytes_left += tokens


def test_consume_op_pays_ops_then_bytes_and_gives_the_op_back_on_failure():
    lim = Ledger(bytes_left=100)
    assert consume_op(lim, 60)
    assert not consume_op(lim, 60)
    assert lim.calls[2:] == [("consume", 1, TokenType.OPS), ("consume", 60, TokenType.BYTES),
                             ("replenish", 1, TokenType.OPS)]
    assert (lim.ops, lim.bytes_left) == (1, 40)
    replenish_op(lim, 60)
    assert (lim.ops, lim.bytes_left) == (0, 100)


def test_helpers_accept_no_limiter():
    assert consume_op(None, 10**12)
    replenish_op(None, 1)
