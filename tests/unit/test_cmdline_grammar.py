"""One kernel-command-line grammar: every user agrees with the kernel's own rules.

`kernel_words` below is the reference: a line-by-line model of the kernel's
`next_arg` and `parse_args` (kernel/params.c) on a char array, written
independently of linuxrc_agent.cmdline. Each user of the grammar (the agent's
parser, the local sync's persisted arguments, the iPXE, PXELINUX, GRUB and
extlinux writers, lilo.ssi --cmdline) is checked against it for arbitrary
strings; GRUB through a model of its script lexer and of how it rebuilds the
command line, pinned to what Debian 12's signed GRUB was measured to do.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from linuxrc_agent import cmdline
from linuxrc_agent.bootpair.kargs import TRANSPORT_KEYS, local_append
from linuxrc_agent.cmdline import CmdlineError, join, parse, tokenize, without
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.lilo import main as lilo_main
from mkinitrd_ssi.netboot import publish as netboot

SPACE = " \t\n\v\f\r"
Words = list[tuple[str, str | None]]


def kernel_words(text: str) -> tuple[Words, Words | None]:
    """(kernel words, init words or None when there is no `--`), as the kernel splits them."""
    args = [*text, "\0"]
    pos = 0

    def skip_spaces(p: int) -> int:
        while args[p] != "\0" and args[p] in SPACE:
            p += 1
        return p

    def next_arg(p: int) -> tuple[str, str | None, int]:
        i, equals, in_quote, quoted = 0, 0, False, False
        if args[p] == '"':
            p += 1
            in_quote = quoted = True
        while args[p + i] != "\0":
            if args[p + i] in SPACE and not in_quote:
                break
            if equals == 0 and args[p + i] == "=":
                equals = i
            if args[p + i] == '"':
                in_quote = not in_quote
            i += 1
        end = p + i  # position of the terminator
        buf = args[:]  # the kernel writes NULs into its copy
        val_start: int | None = None
        if equals:
            buf[p + equals] = "\0"
            val_start = p + equals + 1
            if buf[val_start] == '"':
                val_start += 1
                if buf[p + i - 1] == '"':
                    buf[p + i - 1] = "\0"
        if quoted and i > 0 and buf[p + i - 1] == '"':
            buf[p + i - 1] = "\0"
        buf[end] = "\0"

        def cstr(start: int) -> str:
            out = []
            while buf[start] != "\0":
                out.append(buf[start])
                start += 1
            return "".join(out)

        param = cstr(p)
        value = None if val_start is None else cstr(val_start)
        nxt = end + 1 if args[end] != "\0" else end
        return param, value, skip_spaces(nxt)

    kernel: Words = []
    init: Words | None = None
    pos = skip_spaces(0)
    target = kernel
    while args[pos] != "\0":
        param, value, pos = next_arg(pos)
        if init is None and value is None and param == "--":
            init = target = []
            continue
        target.append((param, value))
    return kernel, init


def ours(text: str) -> tuple[Words, Words | None]:
    args = tokenize(text)
    init = None if args.init is None else [(w.key, w.value) for w in args.init]
    return [(w.key, w.value) for w in args.kernel], init


# Text rich in the characters the grammar cares about.
_alphabet = st.sampled_from([*'ab=" -\t\n.', "ssi.break", "root", "--", "x", "BOOTIF=1",
                             "'", "\\", "$", "${x}", ";", "#", "{"])
_texts = st.one_of(st.text(max_size=60), st.lists(_alphabet, max_size=30).map("".join))


@settings(max_examples=1500, deadline=None)
@given(_texts)
def test_tokenizer_is_the_kernels(text: str) -> None:
    assume("\0" not in text)
    assert ours(text) == kernel_words(text)


@settings(max_examples=1000, deadline=None)
@given(_texts)
def test_join_reads_back_as_the_same_words(text: str) -> None:
    assume("\0" not in text)
    try:
        joined = join(tokenize(text))
    except CmdlineError:
        return  # an unbalanced quote around an inner quote: no spelling exists
    assert kernel_words(joined) == kernel_words(text)
    # And it still holds with a word appended, as loaders do (BOOTIF=, ssi.bootif=).
    kernel, init = kernel_words(joined + " BOOTIF=01-aa")
    assert kernel[-1:] == [("BOOTIF", "01-aa")] or init is not None


@settings(max_examples=800, deadline=None)
@given(_texts)
def test_persisted_arguments_are_the_kernels_less_transport_words(text: str) -> None:
    assume("\0" not in text)
    kept = local_append(text)
    kernel, init = kernel_words(kept)
    expected, expected_init = kernel_words(text)
    assert all(key not in TRANSPORT_KEYS for key, _ in kernel)
    assert set(kernel) <= {w for w in expected if w[0] not in TRANSPORT_KEYS}
    if '"' not in text and all(c.isprintable() or c in SPACE for c in text):
        assert kernel == [w for w in expected if w[0] not in TRANSPORT_KEYS]
        assert (init or []) == [w for w in expected_init or [] if w[0] != "BOOTIF"]


def ipxe_receives(line: str) -> str:
    """What the kernel receives from an iPXE `kernel URL ARGS...` line (no quoting in iPXE)."""
    tokens = [t for t in re.split("[ \t\n\v\f\r]+", line) if t]  # iPXE's isspace()
    assert tokens[0] == "kernel"
    for token in tokens:
        assert not token.startswith("#") and token not in ("||", "&&", ";"), line
        assert "${" not in token or token == "ssi.bootif=${netX/mac}", line
    return " ".join(tokens[2:])


@settings(max_examples=800, deadline=None)
@given(_texts)
def test_every_config_hands_the_kernel_the_same_words(text: str) -> None:
    assume("\0" not in text)
    try:
        args = netboot.check_cmdline(text)
    except SsiError:
        return
    want, want_init = kernel_words(text)
    script = netboot.ipxe_script("ssi/sets/x", args)
    kline = next(line for line in script.split("\n") if line.startswith("kernel "))
    got, got_init = kernel_words(ipxe_receives(kline))
    assert got == [*want, ("ssi.bootif", "${netX/mac}")]
    assert (got_init or []) == (want_init or [])
    cfg = netboot.pxelinux_config("ssi/sets/x", args)
    append = next(line for line in cfg.split("\n") if line.startswith("  APPEND "))
    got, got_init = kernel_words(append[len("  APPEND "):])
    assert got == want and (got_init or []) == (want_init or [])
    grub = netboot.grub_config("ssi/sets/x", args)
    linux = next(line for line in grub.split("\n") if line.startswith("linux "))
    got, got_init = kernel_words(grub_receives(linux))
    assert got == [("BOOT_IMAGE", "/ssi/sets/x/vmlinuz"), *want, ("ssi.bootif", GRUB_MAC)]
    assert (got_init or []) == (want_init or [])


# GRUB: its script lexer (grub-core/script/yylex.l) makes the words, then the `linux`
# command rebuilds the kernel's command line from them (grub_create_loader_cmdline).
GRUB_ENV = {"net_default_mac": "52:54:00:12:34:56"}
GRUB_MAC = GRUB_ENV["net_default_mac"]


def _grub_expand(line: str, i: int) -> tuple[str, int]:
    """The value of the $name or ${name} at line[i], and where the text goes on."""
    m = re.compile(r"\$\{([A-Za-z0-9_]+)\}|\$([A-Za-z0-9_]+)").match(line, i)
    assert m is not None, f"a bare $ in {line!r}"
    return GRUB_ENV.get(m.group(1) or m.group(2), ""), m.end()


def grub_words(line: str) -> list[str]:
    """A GRUB script command's words: blanks separate them, '...' is literal, "..." too but
    for backslash before \\ " $ and $-expansion, a backslash outside quotes takes the next
    character literally, $name expands. Unquoted syntax (; & | < > ( ) { }, # opening a
    word) must not appear in a line we generate."""
    words: list[str] = []
    cur: list[str] = []
    started = False
    i = 0
    while i < len(line):
        c = line[i]
        if c in " \t":
            if started:
                words.append("".join(cur))
                cur, started = [], False
            i += 1
            continue
        assert c not in ";&|<>(){}\n" and not (c == "#" and not started), line
        started = True
        if c == "'":
            end = line.index("'", i + 1)
            cur.append(line[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while line[i] != '"':
                if line[i] == "\\" and line[i + 1] in '\\"$':
                    cur.append(line[i + 1])
                    i += 2
                elif line[i] == "$":
                    value, i = _grub_expand(line, i)
                    cur.append(value)
                else:
                    cur.append(line[i])
                    i += 1
            i += 1
        elif c == "\\":
            cur.append(line[i + 1])
            i += 2
        elif c == "$":
            value, i = _grub_expand(line, i)
            cur.append(value)
        else:
            cur.append(c)
            i += 1
    if started:
        words.append("".join(cur))
    return words


def grub_cmdline(argv: list[str]) -> str:
    """The kernel's command line GRUB builds from the `linux` command's arguments, as
    measured with Debian 12's signed GRUB 2.06: a backslash before each \\, ' and ",
    the word in double quotes if it holds a space."""
    out = []
    for arg in argv:
        escaped = re.sub(r"""([\\'"])""", r"\\\1", arg)
        out.append(f'"{escaped}"' if " " in arg else escaped)
    return " ".join(out)


def grub_receives(line: str) -> str:
    words = grub_words(line)
    assert words[0] == "linux"
    return f"BOOT_IMAGE={words[1]} " + grub_cmdline(words[2:])


def test_the_grub_model_is_what_debians_grub_did() -> None:
    # The line booted under OVMF (shim, grubnetx64 2.06-13+deb12u2) and the guest's
    # /proc/cmdline, verbatim but for the MAC (the model's own).
    line = ("linux /vmlinuz console=ttyS0 panic=-1 'foo=a b' \"sq=it's\" 'bs=a\\b' 'a b=c d' "
            "'e=' ssi.bootif=${net_default_mac} -- init1 'init two'")
    measured = ('BOOT_IMAGE=/vmlinuz console=ttyS0 panic=-1 "foo=a b" sq=it\\\'s bs=a\\\\b '
                '"a b=c d" e= ssi.bootif=52:54:00:12:34:56 -- init1 "init two"')
    assert grub_receives(line) == measured


@settings(max_examples=600, deadline=None)
@given(_texts)
def test_the_agent_reads_what_the_kernel_reads(text: str) -> None:
    assume("\0" not in text)
    words, _init = kernel_words(text)
    roots = [v for k, v in words if k == "root" and v]
    c = parse(text)
    good = [v for v in roots if len(v) <= cmdline.MAX_VALUE and v.isprintable()]
    assert c.root == (good[-1] if good else None)
    assert ("ssi.break" in [k for k, _ in words]) == bool(c.breaks) or c.warnings


# ---------------------------------------------------------------- the bugs of the issue


def test_quoted_value_survives_lilo(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz").write_bytes(b"K" * 100)
    (tmp_path / "boot/initrd.img").write_bytes(b"I" * 100)
    text = 'root=LABEL=r console=ttyS0 foo="a b"'
    assert lilo_main(["--root", str(tmp_path), "--cmdline", text, "--no-push"]) == 0
    assert (tmp_path / "etc/ssi/cmdline").read_text() == text + "\n"
    cfg = (tmp_path / "tftpboot/pxelinux.cfg/default").read_text()
    assert '  APPEND root=LABEL=r console=ttyS0 foo="a b"\n' in cfg
    script = (tmp_path / "tftpboot/ssi.ipxe").read_text()
    assert 'console=ttyS0 foo="a b" ssi.bootif=${netX/mac}\n' in script
    for config in (cfg, script):
        line = next(x for x in config.splitlines() if "console=" in x)
        assert ("foo", "a b") in kernel_words(line)[0]


def test_quoted_break_is_not_persisted() -> None:
    assert parse('"ssi.break=root"').breaks == ("root",)
    kept = local_append('root=LABEL=r "ssi.break=root" ssi.break "ssi.bootif=52:54:00:00:00:01"')
    assert kept == "root=LABEL=r"


def test_init_arguments_stay_after_the_separator() -> None:
    text = 'root=/dev/vda quiet -- single "a b"'
    assert join(tokenize(text)) == text
    assert local_append(text + " BOOTIF=01-52-54-00-00-00-01") == text
    script = netboot.ipxe_script("s", tokenize(text))
    assert "root=/dev/vda quiet ssi.bootif=${netX/mac} -- single" in script
    # PXELINUX's IPAPPEND puts BOOTIF= after init's words: the agent still finds it.
    assert parse(text + " BOOTIF=01-52-54-00-ab-cd-ef").bootif == "52:54:00:ab:cd:ef"


def test_unterminated_quote_is_closed_so_appended_words_stay_words() -> None:
    args = tokenize('root=/dev/vda x="a b')
    assert join(args) == 'root=/dev/vda x="a b"'
    assert kernel_words(join(args) + " ssi.debug")[0][-1] == ("ssi.debug", None)


@pytest.mark.parametrize(("text", "why"), [
    ('root=/dev/vda foo="a  b"', "single spaces"),
    ('root=/dev/vda foo="a\tb"', "control character"),
    ("root=/dev/vda x=${net0/ip}", "expand"),
    ('root=/dev/vda "x=a #b"', "script syntax"),
    ('root=/dev/vda "x=a ; b"', "script syntax"),
    ('root=/dev/vda x="a"b"', "double quote"),
    ("root=/dev/vda x=a\\b", "GRUB would put a backslash"),
    ("root=/dev/vda x=it's", "GRUB would put a backslash"),
    ('root=/dev/vda ""', "GRUB would drop"),
])
def test_what_a_loader_would_change_is_refused(text: str, why: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert lilo_main(["--root", str(tmp_path), "--cmdline", text]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lilo.ssi: --cmdline: ") and why in err
    assert not (tmp_path / "etc/ssi/cmdline").exists()


def test_without_and_join() -> None:
    args = without('BOOT_IMAGE=/v initrd=/i "root=LABEL=a b" ro -- x', {"BOOT_IMAGE", "initrd"})
    assert join(args) == '"root=LABEL=a b" ro -- x'
    assert [w.key for w in args.kernel] == ["root", "ro"]
    assert re.fullmatch(r"[^\n]*", cmdline.for_syslinux(args))


def test_the_loader_prompt_is_locked_unless_the_cluster_allows_editing() -> None:
    locked = netboot.pxelinux_config("s", tokenize("root=/dev/vda"))
    assert "NOESCAPE 1\n" in locked and "ALLOWOPTIONS 0\n" in locked
    for allow in ("ssi.loader_edit", "ssi.loader_edit=1"):
        cfg = netboot.pxelinux_config("s", tokenize(f"root=/dev/vda {allow}"))
        assert "NOESCAPE" not in cfg and "ALLOWOPTIONS" not in cfg
    assert "NOESCAPE 1" in netboot.pxelinux_config("s", tokenize("root=/dev/vda "
                                                                  "ssi.loader_edit=0"))
