"""The frozen agent's start-up cache (mkinitrd_ssi/initrd/startcache.py) and the edited
dataclasses it is frozen with (freeze.lazy_dataclasses).

Each check runs in a fresh interpreter: install() changes the re, dataclasses,
collections and typing modules of the process that calls it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mkinitrd_ssi.initrd import freeze, startcache

# What the agent's modules do at import: regexes (str and bytes, flags, named groups),
# frozen dataclasses, NamedTuples with string annotations.
SAMPLE = '''
from __future__ import annotations
import re
from dataclasses import dataclass, field
from typing import NamedTuple
PATTERNS = [re.compile(r"(?P<mac>[0-9a-f]{2}(?::[0-9a-f]{2}){5})"),
            re.compile(rb"\\x7fELF"), re.compile(r"ssi\\.(\\w+)=(\\S*)", re.ASCII),
            re.compile(r"^[a-z]+$", re.IGNORECASE | re.MULTILINE)]
@dataclass(frozen=True, slots=True)
class Node:
    number: int
    ip: str = "10.0.0.1"
    macs: tuple[str, ...] = field(default_factory=tuple)
class Word(NamedTuple):
    key: str
    value: str | None = None
'''

RUN = '''
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import startcache
from re import _parser
{body}
'''

RECORD = '''
stop = startcache.record(2)
import sample
open(sys.argv[3], "wb").write(stop())
'''

REPLAY = '''
parsed = []
real = _parser.parse
_parser.parse = lambda *a: parsed.append(a) or real(*a)
startcache.install(open(sys.argv[3], "rb").read())
import sample, re  # and what install() imported: re, dataclasses, typing
_parser.parse = real
assert parsed == [], parsed  # every regex came from the cache
fresh = [re.compile(p.pattern, p.flags) for p in sample.PATTERNS]
re.purge()
import re._compiler as c
again = [c.compile(p.pattern, p.flags) for p in sample.PATTERNS]
for got, want in zip(sample.PATTERNS, again):
    assert (got.pattern, got.flags, got.groups, got.groupindex) == \\
        (want.pattern, want.flags, want.groups, want.groupindex)
    assert got == want, (got, want)
m = sample.PATTERNS[0].fullmatch("52:54:00:12:34:01")
assert m and m["mac"] == "52:54:00:12:34:01"
n = sample.Node(1, macs=("a",))
assert n == sample.Node(1, "10.0.0.1", ("a",)) and hash(n) == hash(sample.Node(1, macs=("a",)))
try:
    n.number = 2
except AttributeError:
    pass
else:
    raise AssertionError("a frozen dataclass accepted an assignment")
assert sample.Word("k") == ("k", None) and sample.Word._fields == ("key", "value")
print("replayed", len(parsed))
'''


def run(tmp_path: Path, body: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-S", "-B", "-OO", "-c", RUN.format(body=body),
                           str(tmp_path), str(startcache.__file__).rsplit("/", 1)[0],
                           str(cache)], capture_output=True, text=True, check=False)


def test_recorded_cache_rebuilds_the_same_objects_without_compiling(tmp_path: Path) -> None:
    (tmp_path / "sample.py").write_text(SAMPLE)
    cache = tmp_path / "cache.bin"
    rec = run(tmp_path, RECORD, cache)
    assert rec.returncode == 0, rec.stderr
    assert cache.stat().st_size > 0
    replay = run(tmp_path, REPLAY, cache)
    assert replay.returncode == 0, replay.stderr
    assert "replayed 0" in replay.stdout


def test_unknown_sources_compile_as_before(tmp_path: Path) -> None:
    (tmp_path / "sample.py").write_text(SAMPLE)
    cache = tmp_path / "empty.bin"
    cache.write_bytes(__import__("marshal").dumps(({}, {})))
    body = '''
startcache.install(open(sys.argv[3], "rb").read())
import sample
assert sample.PATTERNS[2].fullmatch("ssi.debug=1").groups() == ("debug", "1")
assert sample.Node(3).ip == "10.0.0.1"
print("ok")
'''
    out = run(tmp_path, body, cache)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_dataclasses_edits_apply_to_this_python(tmp_path: Path) -> None:
    assert freeze.lazy_dataclasses(tmp_path)
    text = (tmp_path / "dataclasses.py").read_text()
    assert "\nimport inspect\n" not in text and "sys.flags.optimize < 2" in text
    probe = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-OO", "-c",
         f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import dataclasses\n"
         "@dataclasses.dataclass\nclass A:\n    x: int = 1\n"
         "assert A() == A(1) and A.__doc__ is None and 'inspect' not in sys.modules\n"
         "print(dataclasses.__file__)"], capture_output=True, text=True, check=False)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == str(tmp_path / "dataclasses.py")
