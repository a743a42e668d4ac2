# cython: language_level=3
"""Compiled fast path of the ingest agent: validate the samples of one input message and fold
them into the internal messages of their entities' partitions, in one pass.

Wrapped by :meth:`stream.routing.Router.add_message`, the only caller. It accepts a sample
only when the Python path would accept it *and* the sample's series is already known valid
(``cache``: ``tuple(label items)`` -> ``{metric: targets}``, filled by the Python
path after its full check); anything else — first sight of a series, a wrong type, a non-finite
number, an extra field, a future timestamp — goes to ``slow(index, item)``, the Python path,
which validates it fully and routes or rejects it. The slow item is handled in place, so the
order of an entity's samples is the order of the batch. ``tests/unit/test_routing.py`` holds
this function to ``decode_metrics`` + :meth:`Router.group` (the reference) on generated
batches, good and bad mixed.
"""
from libc.math cimport isfinite

cdef double _MAX_EXACT_INT = 9007199254740992.0  # 2 ** 53


cdef inline bint _num(object v, bint ts):
    # a float, or an int small enough to be exact as a float (ts: non-negative); bools are ints
    # of type bool, so `type(v) is int` excludes them, as the Python path does
    cdef double d
    if type(v) is float:
        return True
    if type(v) is int:
        try:
            d = v
        except OverflowError:
            return False
        if ts:
            return 0.0 <= d < _MAX_EXACT_INT
        return -_MAX_EXACT_INT < d < _MAX_EXACT_INT
    return False


def route_items(list items, int src_p, object src_o, double max_ts, dict cache, dict out, object slow):
    """Route the samples of one message (``items``: its decoded sample objects) into ``out``.

    ``out``: partition -> {entity id: [entity labels, [[source partition, source offset, rows], ...]]}
    (rows ``(metric, ts, value)``), shared by the messages of one batch. Returns the number of
    samples routed here; ``slow`` is called for every other item.
    """
    cdef Py_ssize_t i, n = len(items), n_fast = 0
    cdef object prev_labels = None, by_metric = None
    cdef object item, labels, metric, value, ts, hit, row, ents, ent, chunks, last
    cdef double v, t
    cdef Py_ssize_t size
    for i in range(n):
        item = items[i]
        if type(item) is not dict:
            slow(i, item)
            continue
        size = len(<dict>item)
        labels = (<dict>item).get("labels")
        if labels is None:
            if size != 3 or "labels" in <dict>item:  # an explicit null is the Python path's to name
                slow(i, item)
                continue
            labels = {}
        elif size != 4 or type(labels) is not dict:
            slow(i, item)
            continue
        metric = (<dict>item).get("metric")
        value = (<dict>item).get("value")
        ts = (<dict>item).get("ts")
        if type(metric) is not str or not _num(value, False) or not _num(ts, True):
            slow(i, item)
            continue
        # the cache is two-level, label set -> metric -> hit, and a sample whose labels equal the
        # previous sample's (an exporter's batch lists a target's metrics together) skips the
        # label-set lookup: hashing a fresh tuple of the labels' fresh strings was ~0.5 us of
        # this function's ~1.5 us per sample. Equal label dicts (in any order) are one series.
        if prev_labels is None or not (labels == prev_labels):
            try:
                by_metric = cache.get(tuple((<dict>labels).items()))
            except TypeError:  # an unhashable label value: the full check names it
                by_metric = None
            if by_metric is None:
                prev_labels = None
                slow(i, item)
                continue
            prev_labels = labels
        hit = (<dict>by_metric).get(metric)
        if hit is None:
            slow(i, item)
            continue
        v = value
        t = ts
        if not (isfinite(v) and isfinite(t) and t >= 0.0 and t <= max_ts):
            slow(i, item)
            continue
        # floats as decoded are kept (no new objects); ints become floats, as Sample makes them
        row = (metric, ts if type(ts) is float else t, value if type(value) is float else v)
        for eid, elabels, p in <list>hit:
            ents = out.get(p)
            if ents is None:
                ents = out[p] = {}
            ent = (<dict>ents).get(eid)
            if ent is None:
                (<dict>ents)[eid] = [elabels, [[src_p, src_o, [row]]]]
                continue
            chunks = (<list>ent)[1]
            last = (<list>chunks)[len(<list>chunks) - 1]  # (wraparound is off: no [-1])
            if (<list>last)[1] == src_o and (<list>last)[0] == src_p:
                (<list>(<list>last)[2]).append(row)
            else:
                (<list>chunks).append([src_p, src_o, [row]])
        n_fast += 1
    return n_fast
