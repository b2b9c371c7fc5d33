"""MMDS data store: PUT/PATCH semantics, the size cap, lookups, JSON vs IMDS rendering."""

import json

import pytest

from nodesvc.mmds.store import (DEFAULT_LIMIT, InvalidDocument, LimitExceeded, MmdsStore,
                                NotFound, NotInitialized, UnsupportedValueType, dumps,
                                merge_patch)

DOC = {"latest": {"meta-data": {"ami-id": "ami-123", "tags": {"a": "1"}, "n": 43,
                                "list": ["x", "y"], "t": True, "none": None},
                  "user-data": "#!/bin/sh\necho hi\n"},
       "a/b": {"c~d": "escaped"}}


def store(doc=DOC, **kw):
    s = MmdsStore(**kw)
    s.put(doc)
    return s


def test_default_limit_is_firecrackers():
    assert DEFAULT_LIMIT == 51200 and MmdsStore().limit == 51200


def test_put_replaces_and_accepts_text_bytes_or_objects():
    s = store()
    s.put('{"b": 1}')
    assert s.document == {"b": 1}
    s.put(b'{"c": "\xc3\xa9"}')
    assert s.document == {"c": "é"}
    with pytest.raises(InvalidDocument):
        s.put("{not json")
    with pytest.raises(InvalidDocument):
        s.put({"x": object()})
    assert s.document == {"c": "é"}  # failed PUTs leave it alone


def test_patch_needs_a_document_first():
    s = MmdsStore()
    with pytest.raises(NotInitialized, match="not initialized"):
        s.patch({"a": 1})
    assert not s.initialized and s.to_json() == "{}"


def test_patch_is_rfc7396_merge():
    s = store({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": "x"})
    s.patch({"a": {"b": None, "z": {"new": True}}, "d": [3], "e": None, "f": "g"})
    assert s.document == {"a": {"c": 2, "z": {"new": True}}, "d": [3], "f": "g"}
    # RFC 7396 appendix A examples
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "foo"}, None) is None
    assert merge_patch({"a": "foo"}, "bar") == "bar"
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch([1, 2], {"a": "b", "c": None}) == {"a": "b"}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_cap_counts_compact_utf8_json_and_refuses_without_change():
    limit = 100
    s = MmdsStore(limit)
    fits = {"k": "v" * (limit - len('{"k":""}'))}
    s.put(fits)
    assert len(s.to_json().encode()) == limit
    with pytest.raises(LimitExceeded) as e:
        s.put({"k": "v" * (limit - len('{"k":""}') + 1)})
    assert e.value.size == limit + 1 and e.value.limit == limit
    assert "doesn't fit" in str(e.value)
    with pytest.raises(LimitExceeded):
        s.patch({"more": 1})
    assert s.document == fits
    with pytest.raises(LimitExceeded):  # é is two bytes in UTF-8
        MmdsStore(10).put({"k": "ééé"})


def test_bad_limit_refused():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            MmdsStore(bad)


def test_imds_object_lists_sorted_keys_with_slash_for_objects():
    s = store()
    assert s.get("/", as_json=False) == "a/b/\nlatest/"
    assert s.get("/latest", as_json=False) == "meta-data/\nuser-data"
    assert s.get("/latest/meta-data/", as_json=False) == "ami-id\nlist\nn\nnone\nt\ntags/"
    assert store({"empty": {}}).get("/empty", as_json=False) == ""


def test_imds_string_is_raw_and_other_leaves_unsupported():
    s = store()
    assert s.get("/latest/meta-data/ami-id", as_json=False) == "ami-123"
    assert s.get("/latest/user-data", as_json=False) == "#!/bin/sh\necho hi\n"
    for leaf in ("n", "list", "t", "none"):
        with pytest.raises(UnsupportedValueType, match="unsupported type"):
            s.get(f"/latest/meta-data/{leaf}", as_json=False)
    # imds_compat ignores a JSON request
    assert s.get("/latest/meta-data/ami-id", as_json=True, imds_compat=True) == "ami-123"


def test_json_is_compact_sorted_and_quotes_strings():
    s = store()
    assert s.get("/latest/meta-data/ami-id", as_json=True) == '"ami-123"'
    assert s.get("/latest/meta-data/n", as_json=True) == "43"
    assert s.get("/latest/meta-data/list", as_json=True) == '["x","y"]'
    assert s.get("/latest/meta-data/none", as_json=True) == "null"
    assert s.get("/", as_json=True) == dumps(DOC)
    assert json.loads(s.get("/", as_json=True)) == DOC
    assert s.get("/latest/meta-data/tags", as_json=True) == '{"a":"1"}'
    assert store({"b": 1, "a": "é"}).get("/", as_json=True) == '{"a":"é","b":1}'


def test_pointer_paths():
    s = store()
    assert s.get("/latest/meta-data/list/1", as_json=True) == '"y"'
    assert s.get("/a~1b/c~0d", as_json=False) == "escaped"
    for missing in ("/nope", "/latest/meta-data/list/2", "/latest/meta-data/list/01",
                    "/latest/meta-data/list/-1", "/latest/meta-data/ami-id/deeper",
                    "/latest//meta-data"):
        with pytest.raises(NotFound):
            s.get(missing, as_json=False)


def test_uninitialized_store_is_null():
    s = MmdsStore()
    assert s.get("/", as_json=True) == "null"
    with pytest.raises(UnsupportedValueType):
        s.get("/", as_json=False)
    with pytest.raises(NotFound):
        s.get("/latest", as_json=False)


def test_document_is_a_copy():
    s = store({"a": {"b": "c"}})
    s.document["a"]["b"] = "changed"
    assert s.get("/a/b", as_json=False) == "c"
    src = {"a": {"b": "c"}}
    s.put(src)
    src["a"]["b"] = "changed"
    assert s.get("/a/b", as_json=False) == "c"
