"""Beam's introspections remembered per object (pipeline/beam_memo.py) give Beam's answers, and pipelines with state
and timers still run right with them."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from altsieve.pipeline import beam_memo

BAG = userstate.BagStateSpec("seen", VarIntCoder())
FLUSH = userstate.TimerSpec("flush", TimeDomain.WATERMARK)
# Beam's way to ask for state and timers is a parameter default: made once here, not in each signature.
SEEN_STATE, FLUSH_TIMER = beam.DoFn.StateParam(BAG), beam.DoFn.TimerParam(FLUSH)


class CountPerKeyAtTheEnd(beam.DoFn):
    """A stateful DoFn with a timer: each key's count, emitted when the window ends."""

    def process(self, element, seen=SEEN_STATE, flush=FLUSH_TIMER,
                window=beam.DoFn.WindowParam):
        seen.add(element[1])
        flush.set(window.end)

    @userstate.on_timer(FLUSH)
    def emit(self, key=beam.DoFn.KeyParam, seen=SEEN_STATE):
        yield key, sum(seen.read())


def test_remembered_dofn_specs_are_beams_and_each_caller_gets_its_own_sets() -> None:
    beam_memo.install()
    stateful, plain = CountPerKeyAtTheEnd(), beam.Map(str).fn
    first = userstate.get_dofn_specs(stateful)
    assert first == ({BAG}, {FLUSH})
    first[0].clear()  # a caller's own set: what the next caller gets is whole
    assert userstate.get_dofn_specs(stateful) == ({BAG}, {FLUSH})
    assert userstate.get_dofn_specs(plain) == (set(), set())
    assert userstate.is_stateful_dofn(stateful) and not userstate.is_stateful_dofn(plain)


class HoldsState:
    def count(self, element, seen=SEEN_STATE):
        seen.add(element)


def test_specs_remembered_per_class_unless_the_dofn_holds_bound_methods_of_its_own() -> None:
    beam_memo.install()
    # Two DoFns of one class (as each bundle processor unpickles its own): one answer, Beam's.
    assert userstate.get_dofn_specs(CountPerKeyAtTheEnd()) == ({BAG}, {FLUSH})
    assert userstate.get_dofn_specs(CountPerKeyAtTheEnd()) == ({BAG}, {FLUSH})
    # ParDo's DoFn class for a callable: with a plain function, then with a bound method asking for state (the
    # instance's own `process`): not the class's answer.
    assert userstate.get_dofn_specs(beam.ParDo(len).fn) == (set(), set())
    assert userstate.get_dofn_specs(beam.ParDo(HoldsState().count).fn) == ({BAG}, set())
    assert userstate.get_dofn_specs(beam.ParDo(str).fn) == (set(), set())


def test_state_and_timers_work_with_the_remembered_specs() -> None:
    beam_memo.install()
    pairs = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        counted = pipeline | beam.Create(pairs) | beam.ParDo(CountPerKeyAtTheEnd())
        assert_that(counted, equal_to([("a", 4), ("b", 7), ("c", 4)]))


def test_a_remembered_view_shares_its_options_values() -> None:
    beam_memo.install()
    options = PipelineOptions(["--direct_num_workers", "3"])
    direct = options.view_as(DirectOptions)
    assert options.view_as(DirectOptions) is direct  # one view per options object and class
    assert direct.direct_num_workers == 3
    direct.direct_running_mode = "multi_processing"  # set through one view: seen through every other and a new one
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert options.get_all_options()["direct_running_mode"] == "multi_processing"
    options.view_as(StandardOptions).runner = "PrismRunner"
    assert direct.view_as(StandardOptions).runner == "PrismRunner"
    other = PipelineOptions([])  # another object: views of its own flags
    assert other.view_as(DirectOptions) is not direct and other.view_as(DirectOptions).direct_num_workers == 1


def test_a_bundle_ends_without_waiting_out_beams_200_ms_sampling_sleep() -> None:
    """The state sampler's thread, joined at each bundle's end, sleeps at most STATE_SAMPLING_PERIOD_MS."""
    import time

    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    beam_memo.install()
    sampler = statesampler.StateSampler("step", CounterFactory())
    assert sampler.sampling_period_ms == beam_memo.STATE_SAMPLING_PERIOD_MS
    sampler.start()
    # Beam's sleep starts at 2 ms and grows by 1.2x to 200 ms, reached after about a second: a stop then waited
    # 0-200 ms, by where the sleep was (here 89 ms with Beam's default).
    time.sleep(1.05)
    started = time.perf_counter()
    sampler.stop()
    assert time.perf_counter() - started < 0.075
