"""Two of Beam's introspections remembered: what Beam works out again and again for the same DoFn and the same
options, at each transform a pipeline applies and at each bundle processor it makes.

- ``userstate.get_dofn_specs(dofn)``: a DoFn's state and timer specs, found by building a signature of each of its
  methods. Beam asks it two or three times for each DoFn (ParDo's signature, its check of stateful DoFns, the runner
  API proto): 458 calls and 14,400 ``inspect.signature`` calls in one ``altsieve run`` of the web benchmark. The
  answer is remembered per DoFn class (every bundle processor unpickles DoFns of its own, new objects of the same
  classes), and per object for a DoFn that holds bound methods of its own (``Map(obj.method)``), whose signatures
  are not its class's.
- ``PipelineOptions.view_as(cls)``: a view of the options as one options class, which parses the flags again with an
  argparse parser of every option of that class (2 ms each): asked at each transform applied and each type check,
  561 times in that run.

A DoFn's methods, and an options object's flags, do not change once a pipeline uses them, and a view shares its
options' values (``_all_options``), so the answers stay right. Select and reshard of that run, in one process:
2.86-3.07 s without these, 2.21-2.27 s with both (two interleaved runs each); the pipelines' construction
0.63 -> 0.19-0.25 s and their runner API protos 0.27-0.35 -> 0.07-0.08 s.

Besides, one wait at the end of every bundle made shorter (``shorten_state_sampling``): Beam's state sampler thread
sleeps up to 200 ms between samples, and a bundle ends only once that thread has woken and been joined.
"""

from __future__ import annotations

import inspect
import types
import weakref
from typing import Any

_installed = False

# The state sampler's longest sleep between two samples (Beam's default: 200 ms). A bundle ends by joining the
# sampler's thread, so each bundle's end waited up to that long, with its worker idle: on bench/bench_web.py (2
# cores), 0.02-0.18 s of both cores at the end of ingest, whose last bundle holds up the pass. Each wake-up costs
# about 70 us of CPU here (a sampler alone for 6 s, twice: 0.66-0.69 ms of CPU a second at 200 ms, 1.52-1.59 at 50,
# 3.4-3.5 at 20, 6.6-7.0 at 10), so the wait saved at a bundle's end is weighed against the CPU of more wake-ups
# all through it: 50 ms.
STATE_SAMPLING_PERIOD_MS = 50


def install() -> None:
    """Remember both answers per object, and shorten the state sampler's sleep, in this process from now on
    (idempotent)."""
    global _installed
    if _installed:
        return
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms import userstate

    _installed = True
    userstate.get_dofn_specs = _remembered_specs(userstate.get_dofn_specs)
    PipelineOptions.view_as = _remembered_views(PipelineOptions.view_as)
    shorten_state_sampling()


def shorten_state_sampling() -> bool:
    """Beam's state samplers made from now on, in this process, sample at most STATE_SAMPLING_PERIOD_MS apart;
    False (nothing changed) where Beam's StateSampler no longer takes ``sampling_period_ms`` as its last parameter."""
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    parameters = list(inspect.signature(init).parameters.values())
    if not parameters or parameters[-1].name != "sampling_period_ms" or init.__defaults__ is None:
        return False
    init.__defaults__ = (*init.__defaults__[:-1], STATE_SAMPLING_PERIOD_MS)
    return True


class _ByIdentity:
    """Values kept per live object, by identity (a DoFn may define ``__eq__``), forgotten when it is collected."""

    def __init__(self) -> None:
        self._values: dict[int, Any] = {}

    def get(self, obj: Any) -> Any:
        return self._values.get(id(obj))

    def put(self, obj: Any, value: Any) -> None:
        try:
            weakref.finalize(obj, self._values.pop, id(obj), None)
        except TypeError:  # an object without weak references: not remembered
            return
        self._values[id(obj)] = value


def _class_key(dofn: Any) -> frozenset[str] | None:
    """What, besides its class, decides a DoFn's specs: which of the class's methods its instance shadows (Beam
    inspects every bound method ``dir(dofn)`` gives); None when the instance holds bound methods of its own."""
    try:
        own = vars(dofn)
    except TypeError:  # no __dict__: nothing of its own
        return frozenset()
    if any(isinstance(value, types.MethodType) for value in own.values()):
        return None
    return frozenset(name for name in own if callable(getattr(type(dofn), name, None)))


def _remembered_specs(get_dofn_specs: Any) -> Any:
    remembered = _ByIdentity()
    by_class: weakref.WeakKeyDictionary[type, dict[frozenset[str], tuple[frozenset[Any], frozenset[Any]]]] = (
        weakref.WeakKeyDictionary())

    def get_dofn_specs_once(dofn: Any) -> tuple[set[Any], set[Any]]:
        key = _class_key(dofn)
        of_class = by_class.setdefault(type(dofn), {}) if key is not None else None
        specs = of_class.get(key) if of_class is not None else remembered.get(dofn)
        if specs is None:
            states, timers = get_dofn_specs(dofn)
            specs = (frozenset(states), frozenset(timers))
            if of_class is not None:
                of_class[key] = specs
            else:
                remembered.put(dofn, specs)
        return set(specs[0]), set(specs[1])  # callers get sets of their own, as from Beam's

    get_dofn_specs_once.__doc__ = get_dofn_specs.__doc__
    return get_dofn_specs_once


def _remembered_views(view_as: Any) -> Any:
    remembered = _ByIdentity()

    def view_as_once(self: Any, cls: type) -> Any:
        views = remembered.get(self)
        if views is None:
            views = {}
            remembered.put(self, views)
        view = views.get(cls)
        if view is None or view._all_options is not self._all_options:
            view = views[cls] = view_as(self, cls)
        return view

    view_as_once.__doc__ = view_as.__doc__
    return view_as_once
