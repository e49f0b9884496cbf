"""What a run leaves unimported (issue 16: small fixed cost), and that nothing it skips is lost.

``agentmill run`` imports Beam without pandas (:mod:`pipelines.beam_import`) and datasketch
without ``scipy.integrate`` (:mod:`transforms.quality.minhash`); each is checked in a fresh
process, with what the skipped import would have provided checked too: Beam's pandas batch
converters once pandas is imported, datasketch's LSH (its optimiser needs ``quad``), and the
LSH shape datasketch would choose.
"""

from __future__ import annotations

import pytest
from datasketch.lsh import _optimal_param

from tests.helpers import python_output
from transforms.quality.minhash import lsh_shape


@pytest.mark.parametrize("num_perm", [16, 32, 64, 128, 256])
def test_lsh_shape_is_the_one_datasketch_chooses(num_perm):
    thresholds = [t / 100 for t in range(30, 100, 5)] + [0.77, 0.83, 0.91]
    assert [lsh_shape(t, num_perm) for t in thresholds] == [_optimal_param(t, num_perm, 0.5, 0.5) for t in thresholds]


def test_minhash_imports_datasketch_without_scipy_integrate_and_its_lsh_still_works():
    out = python_output(
        "import sys\n"
        "from transforms.quality.minhash import lsh_shape, signature\n"
        "values = signature('a prompt about the weather in Paris today', 64)\n"
        "print('integrate', 'scipy.integrate' in sys.modules, 'datasketch' in sys.modules)\n"
        "import datasketch, scipy.integrate\n"
        "print('real', type(scipy.integrate.__spec__).__name__, hasattr(scipy.integrate, 'odeint'))\n"
        "lsh = datasketch.MinHashLSH(threshold=0.8, num_perm=64)\n"  # its optimiser calls quad
        "print('lsh', (lsh.b, lsh.r) == lsh_shape(0.8, 64))\n"
        "m = datasketch.MinHash(num_perm=64, seed=1)\n"
        "m.update(b'x')\n"
        "lsh.insert('a', m)\n"
        "print('query', lsh.query(m))\n"
    )
    assert "integrate False True" in out
    assert "real ModuleSpec True" in out
    assert "lsh True" in out and "query ['a']" in out


def test_the_stand_in_gives_scipy_integrate_once_it_is_gone():
    """What another thread that imported ``scipy.integrate`` while datasketch imported holds."""
    out = python_output(
        "from transforms.quality import minhash\n"
        "stand_in = minhash._stand_in()\n"
        "import scipy.integrate\n"
        "print('odeint', stand_in.odeint is scipy.integrate.odeint, stand_in.quad(lambda x: x, 0, 1)[0])\n"
    )
    assert "odeint True 0.5" in out


def test_signatures_are_the_same_whether_scipy_integrate_was_imported_first():
    code = (
        "{prelude}from transforms.quality.minhash import signature\n"
        "print(signature('the quick brown fox jumps over the lazy dog', 64).tolist())\n"
    )
    assert python_output(code.format(prelude="")) == python_output(code.format(prelude="import scipy.integrate\n"))


def test_beam_imports_without_pandas_and_registers_its_pandas_converters_when_pandas_comes():
    out = python_output(
        "import sys\n"
        "from pipelines.beam_import import import_beam\n"
        "import_beam()\n"
        "import pipelines.run, pipelines.report\n"
        "print('pandas', 'pandas' in sys.modules, 'apache_beam' in sys.modules)\n"
        "import pandas as pd\n"
        "from apache_beam.typehints.batch import BatchConverter\n"
        "print('converter', type(BatchConverter.from_typehints(element_type=int, batch_type=pd.Series)).__name__)\n"
        "print('loader', pd.__loader__ is pd.__spec__.loader and type(pd.__loader__).__name__)\n"
        "print('hooks', [f.name for f in sys.meta_path if type(f).__module__ == 'pipelines.beam_import'])\n"
    )
    assert "pandas False True" in out
    assert "converter SeriesBatchConverter" in out  # as with a plain `import apache_beam`
    assert "loader SourceFileLoader" in out and "hooks ['pymongo']" in out  # pandas' hook is gone


def test_textio_pandas_transforms_are_beams_before_and_after_pandas_comes():
    """Beam defines textio's CSV and JSON transforms only when pandas imports; without pandas
    they are stubs asking to install it. Here they import pandas when called, and are Beam's own
    once pandas is imported: the same transforms and documentation as with a plain import."""
    probe = (
        "import sys\n"
        "{prelude}"
        "import apache_beam as beam\n"
        "from apache_beam.io import textio\n"
        "print('call', type(beam.io.ReadFromCsv('x.csv')).__name__, beam.io.WriteToJson('out').label)\n"
        "print('pandas', 'pandas' in sys.modules)\n"
        "for name in ('ReadFromCsv', 'WriteToCsv', 'ReadFromJson', 'WriteToJson'):\n"
        "    fn = getattr(textio, name)\n"
        "    print(name, fn is getattr(beam.io, name), len(fn.__doc__ or ''), fn.__code__.co_firstlineno)\n"
    )
    lean = python_output(probe.format(prelude="from pipelines.beam_import import import_beam\nimport_beam()\n"))
    plain = python_output(probe.format(prelude=""))
    assert lean == plain
    assert "call _NamedPTransform WriteToJson" in lean and "pandas True" in lean and "ReadFromCsv True" in lean


def test_import_beam_defers_only_what_is_not_imported_yet_and_nothing_once_beam_is():
    out = python_output(
        "import sys, pandas, pymongo, beartype.door, requests\n"
        "from pipelines.beam_import import import_beam\n"
        "import_beam()\n"
        "from apache_beam.io import mongodbio\n"
        "from apache_beam.io.gcp import gce_metadata_util\n"
        "from apache_beam.typehints import typehints\n"
        "print('converters', 'apache_beam.typehints.pandas_type_compatibility' in sys.modules)\n"
        "print('plain', mongodbio.MongoClient is pymongo.MongoClient, typehints.is_subhint is beartype.door.is_subhint,"
        " gce_metadata_util.requests is requests)\n"
        "print('httplib2', 'httplib2' in sys.modules)\n"
        "import_beam()\n"
        "print('hooks', [type(f).__name__ for f in sys.meta_path if type(f).__module__ == 'pipelines.beam_import'])\n"
    )
    assert "converters True" in out and "plain True True True" in out and "hooks []" in out
    assert "httplib2 False" in out  # not imported before: deferred still


#: A fresh process's check of what Beam's import left out, then of each thing it serves.
_DEFERRED_PROBE = """\
import sys
{prelude}
import pipelines.run
names = ('pandas', 'pymongo', 'bson', 'beartype', 'requests', 'httplib2', 'pyparsing', 'urllib3')
print('imported', [name for name in names if name in sys.modules])
from apache_beam.typehints.typehints import is_consistent_with
print('hints', is_consistent_with(int, 5), is_consistent_with(bool, int), is_consistent_with(int, bool))
from apache_beam.io import ReadFromMongoDB, WriteToMongoDB, mongodbio
read = ReadFromMongoDB(uri='mongodb://localhost:1', db='d', coll='c', extra_client_params={{'connect': False}})
write = WriteToMongoDB(uri='mongodb://localhost:1', db='d', coll='c')
print('mongo', type(read._mongo_source.spec['driver']).__name__, hasattr(ReadFromMongoDB.__init__, '__beam_init__'))
print('mongodbio', sorted((k, type(v).__name__) for k, v in vars(mongodbio).items() if not k.startswith('__')))
from apache_beam.io.gcp import gce_metadata_util
import requests
print('requests', gce_metadata_util.requests.get is requests.get,
      gce_metadata_util.requests.exceptions.RequestException is requests.exceptions.RequestException)
from apache_beam.internal import http_client
import httplib2
print('httplib2', isinstance(http_client.get_new_http(), httplib2.Http))
"""


def test_beam_imports_without_pymongo_beartype_requests_or_httplib2_and_each_serves_as_before():
    """What ``import_beam`` leaves out until used, and the same answers from what it serves as
    after a plain ``import apache_beam``: beartype's subhint check (its first call raising
    beartype's exception, which Beam catches), the MongoDB transforms and every name
    ``mongodbio`` imports, GCE metadata's ``requests`` and Beam's HTTP client."""
    lean = python_output(_DEFERRED_PROBE.format(prelude="from pipelines.beam_import import import_beam\nimport_beam()"))
    plain = python_output(_DEFERRED_PROBE.format(prelude="import apache_beam"))
    assert "imported []" in lean and "imported []" not in plain
    assert "hints False True False" in lean and "mongo DriverInfo False" in lean and "httplib2 True" in lean
    assert "requests True True" in lean
    assert [line for line in lean.splitlines() if not line.startswith("imported")] == [
        line for line in plain.splitlines() if not line.startswith("imported")
    ]


def test_a_stand_in_read_during_its_window_ends_it_and_gives_the_real_module():
    out = python_output(
        "import sys, threading\n"
        "from transforms.deferred_imports import StandIn\n"
        "lock = threading.RLock()\n"
        "stand_in = sys.modules['statistics'] = StandIn('statistics', lock, functions=['mean'])\n"
        "from statistics import mean\n"  # binds the stand-in's own function, nothing imported
        "print('held', sys.modules['statistics'] is stand_in, mean is stand_in.mean)\n"
        "print('mean', mean([1, 2, 6]))\n"  # the window is still open: the call ends it
        "real = sys.modules['statistics']\n"
        "print('real', real is not stand_in, stand_in.median is real.median, stand_in.median([1, 5, 9]))\n"
        "print('dunder', hasattr(stand_in, '__path__'), stand_in.__name__)\n"
    )
    assert "held True True" in out and "mean 3" in out
    assert "real True True 5" in out and "dunder False statistics" in out
