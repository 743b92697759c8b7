"""Timing helpers shared by ``bandsolve bench``, ``bandsolve demo`` and the scripts in
``benchmarks/``: every ratio they report is of times measured interleaved (A, B, A, B,
...) in one run, so that both sides see the same disturbances of a shared machine.
"""

import math
import statistics
import time


def seconds(fn):
    """Wall time of one call ``fn()`` (cold runs: compilation, first touch)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runs, rounds, statistic=statistics.median):
    """``{name: statistic of its times}`` for the callables in ``runs`` (a dict), timed in
    turn for ``rounds`` rounds after one untimed warm-up round."""
    for fn in runs.values():
        fn()
    samples = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            samples[name].append(seconds(fn))
    return {name: statistic(times) for name, times in samples.items()}


def best_times(calls, repeat=5, min_seconds=0.2, max_seconds=5.0):
    """Best (minimum) wall time of each call in ``calls``, measured interleaved.

    ``calls`` is a list of ``(fn, prepare)``; each run times ``fn(*prepare())``, where
    ``prepare`` (untimed, may be None) makes fresh arguments for functions that consume
    their inputs. The calls take turns (A, B, A, B, ...), so that the two sides of a ratio
    see the same disturbances of a shared machine. One untimed round comes first: the
    kernels may pick different compiled paths by size, so only a call of the same size
    is a sure warm-up. Then at least ``repeat`` rounds, and more (up to ``20 repeat``)
    while the rounds so far took under ``min_seconds``; after two rounds, stops once
    ``max_seconds`` are spent.
    """
    def once(fn, prepare):
        args = prepare() if prepare is not None else ()
        start = time.perf_counter()
        fn(*args)
        return time.perf_counter() - start

    for fn, prepare in calls:
        once(fn, prepare)
    best = [math.inf] * len(calls)
    spent, rounds = 0.0, 0
    while True:
        for i, (fn, prepare) in enumerate(calls):
            elapsed = once(fn, prepare)
            best[i] = min(best[i], elapsed)
            spent += elapsed
        rounds += 1
        if rounds >= 2 and spent > max_seconds:
            break
        if rounds >= repeat and (spent >= min_seconds or rounds >= 20 * repeat):
            break
    return best


def best_time(fn, prepare=None, repeat=5, min_seconds=0.2, max_seconds=5.0):
    """:func:`best_times` of one call."""
    return best_times([(fn, prepare)], repeat, min_seconds, max_seconds)[0]


