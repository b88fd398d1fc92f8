"""The one identity cache: bounded, least-recently-used, thread-safe, keyed by identity."""

import gc
import sys
import threading
import weakref

import jax
import pytest

from datarax.core._cache import DEFAULT_SIZE, IdentityCache
from datarax.core._keystream import key_stream


def test_least_recently_used_entry_is_dropped():
    cache = IdentityCache(size=3)
    objs = [object() for _ in range(4)]
    for i, obj in enumerate(objs[:3]):
        cache.put(obj, i)
    assert cache.get(objs[0]) == 0  # used again: objs[1] is now the oldest
    cache.put(objs[3], 3)
    assert [cache.get(o) for o in objs] == [0, None, 2, 3]
    assert len(cache) == 3


def test_entries_are_found_by_identity_not_equality():
    cache = IdentityCache()
    a, b = [1, 2], [1, 2]
    cache.put(a, "a")
    assert cache.get(b) is None and cache.get(a) == "a"
    assert cache.put(a, "again") == "a"  # the first value stored stays


class _Obj:
    pass


def test_an_entry_keeps_its_object_alive_so_its_id_is_never_reused():
    cache = IdentityCache()
    obj = _Obj()
    alive = weakref.ref(obj)
    cache.put(obj, "v")
    del obj
    gc.collect()
    assert alive() is not None and cache.get(alive()) == "v"
    cache.clear()
    gc.collect()
    assert alive() is None


def test_compute_runs_once_per_object_and_threads_agree():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        cache = IdentityCache(size=64)
        objs = [object() for _ in range(32)]
        seen = [[] for _ in range(4)]

        def work(out):
            for _ in range(50):
                out.extend(cache.get_or_compute(o, lambda o: [id(o)]) for o in objs)

        threads = [threading.Thread(target=work, args=(out,)) for out in seen]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    for out in seen:
        # Every thread got, for each object, the one value the cache kept.
        assert all(v is cache.get(o) for v, o in zip(out, objs * 50, strict=True))


def test_a_thousand_live_streams_never_evict_each_other():
    assert DEFAULT_SIZE >= 1000
    keys = [jax.random.key(i) for i in range(1000)]
    first = [key_stream(k) for k in keys]
    assert [key_stream(k) for k in keys] == first  # every lookup of the second pass hits


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_a_bad_size_is_refused(size):
    with pytest.raises(ValueError, match="positive int"):
        IdentityCache(size=size)
