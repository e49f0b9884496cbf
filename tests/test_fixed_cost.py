"""The fixed cost of a run (issue 16 item 3), checked by what is done, never by wall time.

Beam's introspection is memoized without changing its answers or the shards; the shard schema
and ``dataset_info.json`` are written without importing ``datasets`` and with its bytes; the
report's charts need no matplotlib; ``validate`` imports neither.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import asdict
from pathlib import Path

import apache_beam as beam
import datasets
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.typehints import decorators

from pipelines import beam_speed
from schemas.hf_features import _VALUES, dataset_info_dict, features_dict
from tests.helpers import python_output, shard_hashes
from transforms.write import SAMPLE_CODEC, shard_schema


class _Fn(beam.DoFn):
    def process(self, element, *rest, side=beam.DoFn.SideInputParam):
        yield element

    @classmethod
    def make(cls, a, b=2):
        return cls()

    @staticmethod
    def helper(x, /, y, *, z=1):
        return x

    def star(*args):
        return args


def _plain(a, b=1, *c, d, **e):
    return a


CALLABLES = [
    _plain,
    lambda x, y=3: x,
    _Fn().process,
    _Fn.make,
    _Fn.helper,
    _Fn().star,
    _Fn.process,
    len,
    str.upper,
    functools.partial(_plain, 1),
    _Fn,
    json.dumps,
]


@pytest.mark.parametrize("fn", CALLABLES, ids=lambda f: getattr(f, "__qualname__", type(f).__name__))
def test_memoized_signatures_are_beams(fn):
    original = getattr(decorators.get_signature, "__wrapped_original__", decorators.get_signature)
    memo = beam_speed.memoized_get_signature(original)
    expected = original(fn)
    assert memo(fn) == expected
    assert memo(fn) == expected  # from the cache
    if inspect.ismethod(fn):
        assert memo(fn) == inspect.signature(fn)


class _Stateful(beam.DoFn):
    COUNT = beam.transforms.userstate.ReadModifyWriteStateSpec("count", beam.coders.VarIntCoder())

    def process(self, element, count=beam.DoFn.StateParam(COUNT)):  # noqa: B008 (Beam's idiom)
        yield element


@pytest.mark.parametrize("dofn", [_Fn(), _Stateful(), beam.transforms.core.CallableWrapperDoFn(_plain)])
def test_memoized_dofn_specs_are_beams(dofn):
    from apache_beam.transforms import userstate

    original = getattr(userstate.get_dofn_specs, "__wrapped_original__", userstate.get_dofn_specs)
    memo = beam_speed.memoized_dofn_specs(original)
    expected = original(dofn)
    assert bool(expected[0]) == isinstance(dofn, _Stateful)
    first = memo(dofn)
    assert first == expected
    first[0].clear()  # callers get copies
    assert memo(dofn) == expected


class _Holder:
    """Bound methods with and without a state parameter, to put on DoFn objects."""

    def plain(self, element):
        return element

    def stateful(self, element, count=beam.DoFn.StateParam(_Stateful.COUNT)):  # noqa: B008
        return element


class _WithProperty(beam.DoFn):
    @property
    def helper(self):
        return self.method

    def process(self, element):
        yield element


class _DunderProperty(beam.DoFn):
    """A property under a dunder name (``dir`` lists it like any other) whose bound method
    depends on a plain instance attribute."""

    __helper__ = property(lambda self: getattr(_Holder(), self.which))

    def process(self, element):
        yield element


class _Slotted(beam.DoFn):
    __slots__ = ("method",)

    def process(self, element):
        yield element


def _with(dofn, **attributes):
    for name, value in attributes.items():
        setattr(dofn, name, value)
    return dofn


def _shape_cases():
    wrap = beam.transforms.core.CallableWrapperDoFn
    holder = _Holder()
    return [
        ("plain", [_Fn(), _Fn(), _with(_Fn(), note="x")]),
        ("stateful", [_Stateful(), _Stateful()]),
        ("instance methods", [_with(_Fn(), extra=holder.plain), _with(_Fn(), extra=holder.stateful), _Fn()]),
        ("hiding the class method", [_with(_Stateful(), process=_plain), _Stateful()]),
        ("Map and FlatMap", [wrap(_plain), wrap(holder.stateful), wrap(holder.plain), wrap(len), wrap(_plain)]),
        ("property", [_with(_WithProperty(), method=holder.stateful), _with(_WithProperty(), method=holder.plain)]),
        ("dunder property", [_with(_DunderProperty(), which=name) for name in ("plain", "stateful")]),
        ("slots", [_with(_Slotted(), method=holder.stateful), _with(_Slotted(), method=holder.plain)]),
    ]


@pytest.mark.parametrize(("case", "dofns"), _shape_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_dofn_specs_memoized_by_shape_are_beams_for_every_object(case, dofns):
    """Objects of one class share an answer only when :func:`dofn_shape` says they must: each
    object's answer is Beam's, whatever object of its class was asked first."""
    from apache_beam.transforms import userstate

    original = getattr(userstate.get_dofn_specs, "__wrapped_original__", userstate.get_dofn_specs)
    expected = [original(dofn) for dofn in dofns]
    for order in (dofns, dofns[::-1]):
        memo = beam_speed.memoized_dofn_specs(original)
        assert {id(d): memo(d) for d in order} == {id(d): e for d, e in zip(dofns, expected, strict=True)}
    if case in ("property", "dunder property", "slots"):
        assert all(beam_speed.dofn_shape(d) is None for d in dofns)
    if case == "instance methods":
        assert len({beam_speed.dofn_shape(d) for d in dofns}) == 3 and bool(expected[1][0])


def test_memoized_views_share_the_options():
    options = PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=2"])
    original = getattr(PipelineOptions.view_as, "__wrapped_original__", PipelineOptions.view_as)
    view_as = beam_speed.memoized_view_as(original)
    first = view_as(options, StandardOptions)
    assert view_as(options, StandardOptions) is first
    assert first.runner == "DirectRunner"
    first.runner = "FnApiRunner"
    fresh = original(options, StandardOptions)
    assert fresh.runner == "FnApiRunner"
    assert options.get_all_options()["direct_num_workers"] == 2


class _YieldsAndReturns(beam.DoFn):
    def process(self, element):
        if element:
            return [element]
        yield element


@pytest.mark.parametrize("fn", [_Fn().process, _YieldsAndReturns().process, _Fn.make, _plain, len, json.dumps])
def test_memoized_yield_check_is_beams(fn):
    from apache_beam.transforms import core

    original = getattr(core._check_fn_use_yield_and_return, "__wrapped_original__", None)
    original = original or core._check_fn_use_yield_and_return
    check = beam_speed.memoized_yield_check(original)
    assert check(fn) == check(fn) == original(fn)
    assert check(_YieldsAndReturns().process) is True  # another bound method of the same function


def _schemas() -> list[pa.Schema]:
    every = [pa.field(f"f{i}", t) for i, t in enumerate(_VALUES)]
    nested = pa.field("l", pa.list_(pa.struct([("a", pa.list_(pa.int64())), ("b", pa.float32())])))
    return [SAMPLE_CODEC.schema, pa.schema([*every, nested, pa.field("s", pa.struct([]))])]


@pytest.mark.parametrize("schema", _schemas(), ids=["shard schema", "every supported type"])
def test_features_are_written_as_datasets_writes_them(schema):
    features = datasets.Features.from_arrow_schema(schema)
    assert json.dumps(features_dict(schema)) == json.dumps(features.to_dict())
    assert json.dumps(dataset_info_dict(schema)) == json.dumps(asdict(datasets.DatasetInfo(features=features)))


def test_unsupported_types_ask_datasets():
    schema = pa.schema([pa.field("t", pa.timestamp("s")), pa.field("d", pa.dictionary(pa.int32(), pa.string()))])
    assert features_dict(schema) == datasets.Features.from_arrow_schema(schema).to_dict()


def test_shard_schema_metadata_loads_in_datasets():
    metadata = json.loads(shard_schema().metadata[b"huggingface"])
    features = datasets.Features.from_dict(metadata["info"]["features"])
    assert features.arrow_schema.names == SAMPLE_CODEC.schema.names


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    return set(python_output(probe).split()[-1000:])


def test_validate_imports_neither_matplotlib_nor_datasets():
    modules = _modules_after("from pipelines.cli import main\nassert main(['validate', 'pipelines/demo.yaml']) == 0")
    assert not modules & {"matplotlib", "datasets"}


def test_report_charts_need_no_matplotlib():
    code = (
        "from pipelines.report_html import bar_chart, histograms\n"
        "svg = bar_chart('t', ['a', 'b'], {'x': [1, None], 'y': [0.5, 2]}, 'share')\n"
        "svg += histograms('h', {'g': ([1, 2, 30], [1, 1, 5]), 'empty': ([], [])})\n"
        "assert svg.count('<svg') == 4 and 'matplotlib' not in svg"
    )
    assert "matplotlib" not in _modules_after(code)


def test_bundles_sample_with_a_2_ms_ceiling_so_their_ends_do_not_wait_out_200_ms_sleeps():
    """A bundle's end joins Beam's state-sampler thread, which sleeps up to its sampling period
    (Beam's 200 ms). Bundles make their sampler with the default period: it is now 2 ms, and
    a period given explicitly is kept."""
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    beam_speed.apply()
    assert statesampler.StateSampler("test", CounterFactory()).sampling_period_ms == 2  # as bundle_processor
    assert statesampler.StateSampler("test", CounterFactory(), 200).sampling_period_ms == 200
    beam_speed.shorter_sampling_period()  # idempotent
    assert statesampler.StateSampler("test", CounterFactory()).sampling_period_ms == 2


#: Counts bz2 compressions in a fresh process (Beam's pickler calls ``bz2.compress``).
_COUNT_BZ2 = (
    "import bz2\ncompressed = []\n_c = bz2.compress\n"
    "bz2.compress = lambda *a, **k: compressed.append(1) or _c(*a, **k)\n"
)
_PLAIN_BEAM = (
    "import contextlib, pipelines.beam_speed as b\nb.apply = lambda: None\n"
    "b.uncompressed_payloads = lambda in_process: contextlib.nullcontext()\n"
)


def test_shards_are_the_same_without_the_memoizations(tmp_path):
    """The demo's shards with Beam's introspection memoized and its pickles uncompressed, and
    without (Beam's bz2 for all 446 of them); neither run imports matplotlib or datasets."""
    outputs, compressions = {}, {}
    for name, prelude in (("memoized", _COUNT_BZ2), ("plain", _COUNT_BZ2 + _PLAIN_BEAM)):
        out = tmp_path / name
        command = f"main(['run', 'pipelines/demo.yaml', '-o', {str(out)!r}, '-q'])"
        code = (
            f"{prelude}import sys\nfrom pipelines.cli import main\nrc = {command}\n"
            "print(len(compressed), ' '.join(sorted({m.split('.')[0] for m in sys.modules})))\nraise SystemExit(rc)"
        )
        count, *modules = python_output(code, timeout=900).split("\n")[-2].split()
        assert not set(modules) & {"matplotlib", "datasets"}  # a run imports neither
        outputs[name], compressions[name] = out, int(count)
    assert compressions == {"memoized": 0, "plain": compressions["plain"]} and compressions["plain"] > 100
    assert shard_hashes(outputs["memoized"]) == shard_hashes(outputs["plain"])
    for name in ("dataset_info.json", "state.json"):
        assert (outputs["memoized"] / name).read_bytes() == (outputs["plain"] / name).read_bytes()
    loaded = datasets.load_from_disk(str(outputs["memoized"]))
    assert loaded.num_rows > 0 and Path(outputs["memoized"] / "report.html").read_text().count("<svg") >= 7


def test_in_process_runs_keep_beams_pickles_uncompressed_and_every_reader_reads_both():
    """Inside ``uncompressed_payloads(True)`` Beam's pickler writes plain pickles; outside, and
    with ``False``, bz2 as Beam does. Its ``loads`` reads both, inside and outside."""
    import base64

    from apache_beam.internal import pickler

    beam_speed.apply()

    def start(payload: bytes) -> bytes:
        return base64.b64decode(payload)[:3]

    compressed = pickler.dumps(_Fn())
    assert start(compressed) == b"BZh"
    with beam_speed.uncompressed_payloads(False):
        assert start(pickler.dumps(_Fn())) == b"BZh"
    with beam_speed.uncompressed_payloads(True):
        plain = pickler.dumps(_Fn())
        with beam_speed.uncompressed_payloads(True):  # nested runs
            assert start(pickler.dumps(_Fn()))[:1] == b"\x80"
        assert start(plain)[:1] == b"\x80" and start(pickler.dumps(_Fn()))[:1] == b"\x80"
        assert type(pickler.loads(compressed)) is _Fn
    assert type(pickler.loads(plain)) is _Fn and type(pickler.loads(compressed)) is _Fn
    assert start(pickler.dumps(_Fn())) == b"BZh"


@pytest.mark.parametrize(
    ("runner", "args", "expected"),
    [
        ("fn_api", [], True),
        ("fn_api", ["--direct_running_mode=multi_threading"], True),
        ("fn_api", ["--direct_running_mode=multi_processing"], False),
        ("forked", ["--direct_running_mode=multi_processing"], False),
        ("forked", [], True),
        ("PortableRunner", [], False),
        ("DataflowRunner", [], False),
    ],
)
def test_only_runs_with_their_workers_in_this_process_skip_compression(runner, args, expected):
    """A worker in a new process (multi-processing, forked or cold; portable; remote) reads
    Beam's payloads with Beam's own bz2, so only in-process runs skip it."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipelines import forked_workers

    made = {"fn_api": FnApiRunner, "forked": forked_workers.ForkedWorkersRunner}
    instance = made[runner]() if runner in made else runner
    assert forked_workers.workers_in_process(instance, PipelineOptions(args)) is expected


def test_builtin_tool_cards_are_parsed_once_per_process(monkeypatch):
    from transforms import tool_cards

    parsed = []
    original = tool_cards.parse_card
    monkeypatch.setattr(tool_cards, "parse_card", lambda text, origin: parsed.append(origin) or original(text, origin))
    tool_cards._parsed_builtin_cards.cache_clear()
    first, second = tool_cards.load_cards(), tool_cards.load_cards()
    assert first == second and len(parsed) == len(first.cards) == len(set(parsed))
    tool_cards._parsed_builtin_cards.cache_clear()


def test_the_command_freezes_its_imports_out_of_the_collectors_reach_and_main_does_not(tmp_path):
    """``run`` imports Beam after the command started (``validate`` does without it): what it
    imports is frozen too (about 160,000 objects with Beam; the CLI alone, about 40,000), and it
    collects its young generation every 10,000 allocations instead of 700 (main does neither). The
    command's run of the demo leaves pandas, pymongo, beartype, requests, httplib2 and
    ``scipy.integrate`` unimported (``pipelines/beam_import.py``,
    ``transforms/quality/minhash.py``), and matplotlib and ``datasets``."""
    out = python_output(
        "import atexit, gc, sys\n"
        "from pipelines import cli\n"
        "assert cli.main(['validate', 'pipelines/demo.yaml', '--no-inputs']) == 0\n"
        "print('after main', gc.get_freeze_count(), gc.get_threshold()[0])\n"
        "atexit.register(lambda: print('after command', gc.get_freeze_count() > 100_000, gc.get_threshold()[0]))\n"
        "atexit.register(lambda: print('left', sorted(m for m in ('pandas', 'scipy.integrate', 'matplotlib',"
        " 'datasets', 'pymongo', 'bson', 'beartype', 'requests', 'httplib2') if m in sys.modules)))\n"
        f"sys.argv = ['agentmill', 'run', 'pipelines/demo.yaml', '-o', {str(tmp_path / 'out')!r}, '-q']\n"
        "cli.command()\n"
    )
    assert "after main 0 700" in out and "after command True 10000" in out
    assert "left []" in out
