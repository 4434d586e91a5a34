"""A big node table: errors near its end are still reported at their exact line and column.

bench/bench_ssitab_1m.py does the same on 1,000,000 lines and reports time and memory;
here 200,000 lines keep the unit tier quick.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_ssitab_1m import big_table, broken
from linuxrc_agent.ssitab import SsitabError, load

LINES = 200_000


def test_errors_near_the_end_of_a_big_table_are_line_exact(tmp_path: Path) -> None:
    table, expected = broken(big_table(LINES))
    path = tmp_path / "ssitab"
    path.write_text("\n".join(table) + "\n")
    with pytest.raises(SsitabError) as info:
        load(str(path))
    got = [(p.path, p.line, p.col) for p in info.value.problems]
    assert got == [(str(path), line, col) for line, col, _ in expected]
    for problem, (_line, _col, message) in zip(info.value.problems, expected, strict=True):
        assert problem.message.startswith(message)
    assert expected[-1][0] == LINES  # the very last line


def test_the_same_big_table_without_the_errors_parses_whole(tmp_path: Path) -> None:
    path = tmp_path / "ssitab"
    path.write_text("\n".join(big_table(LINES)) + "\n")
    table = load(str(path))
    assert len(table) == LINES - 1
    last = table.nodes[-1]
    assert (last.number, last.line, last.prefix) == (LINES - 1, LINES, 8)
