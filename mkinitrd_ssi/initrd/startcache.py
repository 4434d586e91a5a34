"""What importing the frozen agent compiles, compiled once at freeze time (issue 14).

Importing the agent compiles code from text, again at every boot: its regular
expressions (re's parser and compiler are Python code), the methods
dataclasses writes as source and exec()s, the constructor collections.namedtuple
eval()s, and typing's check of every string annotation of a NamedTuple, which
compile()s it. freeze.py records all of it while it imports the agent's modules
on the build host (record), and the frozen agent carries the result as the
module _ssi_startcache, which a runtime hook imports (install): a regular
expression found there is built straight from its recorded program
(_sre.compile, what re's compiler ends with), a source text found there runs
its recorded code object. The objects are the same as compiling them again;
anything not recorded is compiled as before. Measured (valgrind, the agent's
imports): 35 million instructions fewer, and about 4,000 fewer basic blocks of C,
the parser and compiler that QEMU no longer has to translate at each boot.

This file is copied verbatim into the frozen agent, followed by its data: it
imports nothing outside the standard library, and nothing the agent does not
import anyway.
"""

from __future__ import annotations

import builtins
import marshal
from collections.abc import Callable
from typing import Any

# (pattern, flags) -> (flags the pattern adds, program, groups, groupindex, indexgroup)
Regexes = dict[tuple[str | bytes, int], tuple[int, list[int], int, dict[str, int],
                                               tuple[str | None, ...]]]
# (how, source) -> its code object; how is exec, eval (whole statements or expressions,
# compiled by exec()/eval()), or compile (typing's forward references, mode eval)
Codes = dict[tuple[str, str], Any]


def record(optimize: int) -> Callable[[], bytes]:
    """Record what is compiled from now on (code at `optimize`, the frozen agent's level);
    the function returned stops and gives the marshalled cache."""
    from re import _compiler, _parser  # type: ignore[attr-defined]

    regexes: Regexes = {}
    codes: Codes = {}
    real_regex = _compiler.compile

    def regex(p: Any, flags: int = 0) -> Any:
        if isinstance(p, (str, bytes)) and (p, flags) not in regexes:
            tree = _parser.parse(p, flags)
            program = [int(op) for op in _compiler._code(tree, flags)]
            index: list[str | None] = [None] * tree.state.groups
            for name, i in tree.state.groupdict.items():
                index[i] = name
            regexes[(p, flags)] = (tree.state.flags, program, tree.state.groups - 1,
                                   dict(tree.state.groupdict), tuple(index))
        return real_regex(p, flags)

    def recorder(how: str, run: Callable[..., Any]) -> Callable[..., Any]:
        def record_source(source: Any, *args: Any) -> Any:
            if isinstance(source, str):
                codes[(how, source)] = builtins.compile(source, "<string>", how,
                                                        dont_inherit=True, optimize=optimize)
            return run(source, *args)
        return record_source

    def compile_(source: Any, filename: str, mode: str, flags: int = 0,
                 dont_inherit: bool = False, optimize_: int = -1) -> Any:
        if isinstance(source, str) and (filename, mode, flags) == ("<string>", "eval", 0):
            codes[("compile", source)] = builtins.compile(source, filename, mode,
                                                          dont_inherit=True, optimize=optimize)
        return builtins.compile(source, filename, mode, flags, dont_inherit, optimize_)

    _compiler.compile = regex  # first: the modules below compile regexes as they load
    import collections
    import dataclasses
    import typing

    patched: list[tuple[object, str, object]] = [
        (_compiler, "compile", regex),
        (dataclasses, "exec", recorder("exec", builtins.exec)),
        (collections, "eval", recorder("eval", builtins.eval)),
        (typing, "compile", compile_)]
    for module, name, value in patched:
        setattr(module, name, value)

    def stop() -> bytes:
        _compiler.compile = real_regex
        for module, name, _ in patched[1:]:
            delattr(module, name)  # the builtin shows through again
        return marshal.dumps((regexes, codes))

    return stop


def install(data: bytes) -> None:
    """Use the recorded cache from now on."""
    import _sre  # type: ignore[import-not-found]
    from re import _compiler  # type: ignore[attr-defined]

    regexes: Regexes
    codes: Codes
    regexes, codes = marshal.loads(data)
    compile_regex = _compiler.compile
    run_exec, run_eval, run_compile = builtins.exec, builtins.eval, builtins.compile

    def regex(p: Any, flags: int = 0) -> Any:
        hit = regexes.get((p, flags)) if isinstance(p, (str, bytes)) else None
        if hit is None:
            return compile_regex(p, flags)
        extra, program, groups, groupindex, indexgroup = hit
        return _sre.compile(p, flags | extra, program, groups, groupindex, indexgroup)

    # dataclasses and collections always pass their namespaces: no caller's frame to find.
    def exec_(source: Any, globals: Any = None, locals: Any = None) -> None:
        code = codes.get(("exec", source)) if isinstance(source, str) else None
        run_exec(source if code is None else code, globals, locals)

    def eval_(source: Any, globals: Any = None, locals: Any = None) -> Any:
        code = codes.get(("eval", source)) if isinstance(source, str) else None
        return run_eval(source if code is None else code, globals, locals)

    def compile_(source: Any, filename: str, mode: str, flags: int = 0,
                 dont_inherit: bool = False, optimize: int = -1) -> Any:
        if isinstance(source, str) and (filename, mode, flags) == ("<string>", "eval", 0):
            code = codes.get(("compile", source))
            if code is not None:
                return code
        return run_compile(source, filename, mode, flags, dont_inherit, optimize)

    _compiler.compile = regex  # first: the modules below compile regexes as they load
    import collections
    import dataclasses
    import typing

    setattr(dataclasses, "exec", exec_)  # noqa: B010 (module globals shadow the builtins)
    setattr(collections, "eval", eval_)  # noqa: B010
    setattr(typing, "compile", compile_)  # noqa: B010
