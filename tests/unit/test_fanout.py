"""The pure half of the push: node selection, ssh failure classes, answers, report, spool."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from linuxrc_agent.bootpair.extlinux import EXTLINUX
from linuxrc_agent.bootpair.pair import FileId, LocalPair, PairMember, member_name
from linuxrc_agent.ssitab import parse
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.local import node as localnode
from mkinitrd_ssi.push import spool as pairspool
from mkinitrd_ssi.push.fanout import PushOptions, _Outcome, _Push, ssh_options_string
from mkinitrd_ssi.push.report import (
    NodeResult,
    Progress,
    Status,
    Target,
    as_json,
    exit_code,
    select_nodes,
    ssh_failure,
    summary,
    table,
    targets,
)

TABLE = parse("""\
1  10.77.0.11/24  52:54:00:00:00:01  1    /dev/vda1
2  10.77.0.12/24  52:54:00:00:00:02  0    -
3  10.77.0.13/24  52:54:00:00:00:03  yes  LABEL=ssiboot  hostname=n3
4  10.77.0.14/24  52:54:00:00:00:04  1    UUID=abcd-1234
7  10.77.0.17/24  52:54:00:00:00:07  1    PARTUUID=0badcafe-01
""", "ssitab")


def numbers(spec: str | None) -> list[int]:
    return [n.number for n in select_nodes(TABLE, spec)]


def test_selection_defaults_to_every_local_node_in_number_order() -> None:
    assert numbers(None) == [1, 3, 4, 7]


@pytest.mark.parametrize(("spec", "expected"), [
    ("1-4,7", None),  # 2 is not local: an error, tested below
    ("1,3-4", [1, 3, 4]),
    ("7", [7]),
    ("[3-4]", [3, 4]),
    ("n3,node[4,7]", [3, 4, 7]),
    ("10.77.0.[11,14]", [1, 4]),
    ("N3", [3]),
])
def test_selection_by_numbers_hostnames_and_addresses(spec: str, expected: list[int] | None
                                                      ) -> None:
    if expected is None:
        with pytest.raises(SsiError, match="no local boot flag in the node table: 2"):
            numbers(spec)
    else:
        assert numbers(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("5-6", "not in the node table: 5-6"),
    ("node9", "not in the node table: node9"),
    ("node[1-", "--nodes 'node\\[1-'"),
])
def test_selection_errors_name_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(SsiError, match=message):
        numbers(spec)


def test_targets_by_ip_or_hostname() -> None:
    nodes = select_nodes(TABLE, "3")
    assert [t.address for t in targets(nodes, "ip")] == ["10.77.0.13"]
    assert [t.address for t in targets(nodes, "hostname")] == ["n3"]


@pytest.mark.parametrize(("stderr", "down", "why"), [
    (["ssh: connect to host 10.0.0.1 port 22: Connection refused"], True,
     "connect to host 10.0.0.1 port 22: Connection refused"),
    (["ssh: connect to host 10.0.0.1 port 22: Connection timed out"], True, None),
    (["ssh: connect to host 10.0.0.1 port 22: No route to host"], True, None),
    (["ssh: connect to host 10.0.0.1 port 22: Network is unreachable"], True, None),
    (["ssh: Could not resolve hostname n9: Name or service not known"], False,
     "Could not resolve hostname n9: Name or service not known"),
    (["root@10.0.0.1: Permission denied (publickey)."], False,
     "root@10.0.0.1: Permission denied (publickey)."),
    (["@@@@@@", "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!",
      "Host key verification failed."], False, "Host key verification failed."),
    ([], False, "no message"),
])
def test_ssh_failures_down_only_when_never_connected(stderr: list[str], down: bool,
                                                     why: str | None) -> None:
    got_down, got_why = ssh_failure(stderr)
    assert got_down is down
    if why is not None:
        assert got_why == why


def test_ssh_options_admin_first_so_they_win() -> None:
    text = ssh_options_string(["Port=2222", "IdentityFile=/root/my key"])
    assert text.startswith("-oPort=2222 '-oIdentityFile=/root/my key' ")
    assert text.endswith("-oBatchMode=yes -oLogLevel=ERROR")


def result(number: int, status: Status, detail: str = "", sent: int = 0) -> NodeResult:
    node = TABLE.by_number()[number]
    return NodeResult(Target(node, node.ip), status, detail, sent, 0.5)


RESULTS = [result(4, Status.FAILED, "No space left on device", 3 << 20),
           result(1, Status.UPDATED, "wrote kernel", 3 << 20),
           result(3, Status.DOWN, "connect to host: Connection refused"),
           result(7, Status.UNCHANGED)]


def test_table_rows_in_number_order_and_summary_names_failures() -> None:
    text = table(RESULTS)
    rows = text.splitlines()
    assert rows[0].split() == ["NODE", "HOSTNAME", "ADDRESS", "STATUS", "SENT", "DETAIL"]
    assert [r.split()[0] for r in rows[1:5]] == ["1", "3", "4", "7"]
    assert rows[1].split()[:5] == ["1", "node1", "10.77.0.11", "updated", "3.0"]
    assert rows[4].split()[3:5] == ["unchanged", "-"]
    assert rows[5] == ("4 local-boot node(s): 1 unchanged, 1 updated, 1 down, 1 failed; "
                       "failed: node 4; 6.0 MiB sent")


def test_summary_folds_failed_node_numbers() -> None:
    failed = [result(n, Status.FAILED) for n in (1, 3, 4)]
    assert summary(failed).endswith("3 failed; failed: node 1,3-4")


def test_json_is_complete_and_ordered() -> None:
    doc = json.loads(as_json(RESULTS, {"pair": {"id": "x"}}))
    assert doc["pair"] == {"id": "x"}
    assert doc["counts"] == {"failed": 1, "updated": 1, "down": 1, "unchanged": 1}
    assert doc["sent_bytes"] == 6 << 20
    assert [n["node"] for n in doc["nodes"]] == [1, 3, 4, 7]
    assert doc["nodes"][0] == {"node": 1, "hostname": "node1", "address": "10.77.0.11",
                               "status": "updated", "detail": "wrote kernel",
                               "sent_bytes": 3 << 20, "seconds": 0.5}


def test_exit_code_fails_only_on_failed_nodes() -> None:
    assert exit_code(RESULTS) == 1
    assert exit_code([r for r in RESULTS if r.status is not Status.FAILED]) == 0


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal() -> None:
    stream = Tty()
    progress = Progress.for_stream(4, stream, verbose=False)
    progress.min_interval = 0
    for r in RESULTS:
        progress.finished(r)
    progress.close()
    out = stream.getvalue()
    assert out.count("\r\033[K") == 4 and out.endswith("\n") and out.count("\n") == 1
    assert out.rsplit("\r\033[K", 1)[1] == \
        "push: 4/4 done: 1 unchanged, 1 updated, 1 down, 1 failed\n"


def test_progress_is_a_line_per_node_with_verbose_and_silent_otherwise() -> None:
    stream = io.StringIO()
    progress = Progress.for_stream(4, stream, verbose=True)
    progress.finished(RESULTS[0])
    assert stream.getvalue() == ("lilo.ssi: node 4 10.77.0.14: failed (No space left on "
                                 "device) [push: 1/4 done: 0 unchanged, 0 updated, 0 down, "
                                 "1 failed]\n")
    quiet = io.StringIO()
    progress = Progress.for_stream(4, quiet, verbose=False)
    for r in RESULTS:
        progress.finished(r)
    progress.close()
    assert quiet.getvalue() == ""


# -- answers to the three steps, classified without a network


@pytest.fixture
def pair_files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "k").write_bytes(b"K" * 5000)
    (tmp_path / "i").write_bytes(b"I" * 7000)
    return tmp_path / "k", tmp_path / "i"


def make_push(staged: pairspool.Staged, dry_run: bool = False) -> _Push:
    node = TABLE.by_number()[1]
    t = Target(node, node.ip)
    push = _Push(None, {t.address: t}, staged, PushOptions(dry_run=dry_run),
                 Progress(1))
    push.started[t.address] = 0.0
    return push


def answer(status: str = "ok", pair: pairspool.Pair | None = None, **more: object) -> str:
    return json.dumps({"status": status, "reason": "", "boot_dir": "/b",
                       "pair": None if pair is None else pair.as_dict(), **more})


@pytest.mark.parametrize("case", ["same", "other", "none", "no-append", "dry"])
def test_answers_to_hashes(pair_files: tuple[Path, Path], case: str) -> None:
    with pairspool.staged(*pair_files, "root=/dev/sda console=ttyS0") as staged:
        push = make_push(staged, dry_run=case == "dry")
        have = {"same": staged.pair, "dry": None, "none": None,
                "other": pairspool.Pair(staged.pair.kernel, FileId(1, "0" * 32),
                                        staged.pair.append),
                "no-append": pairspool.Pair(staged.pair.kernel, staged.pair.initrd, None),
                }[case]
        needs = push.ask("10.77.0.11", _Outcome(0, ["banner", answer(pair=have)], [], False))
        if case in ("same", "no-append"):
            assert needs == [] and push.results["10.77.0.11"].status is Status.UNCHANGED
        elif case == "dry":
            assert needs == [] and push.results["10.77.0.11"].status is Status.STALE
        else:
            assert needs == ["10.77.0.11"] and not push.results


@pytest.mark.parametrize(("outcome", "status", "detail"), [
    (_Outcome(None, [], [], True), Status.DOWN, "no answer within 60 s"),
    (_Outcome(255, [], ["ssh: connect to host x port 22: No route to host"], False),
     Status.DOWN, "connect to host x port 22: No route to host"),
    (_Outcome(255, [], ["root@x: Permission denied (publickey)."], False), Status.FAILED,
     "root@x: Permission denied (publickey)."),
    (_Outcome(127, [], ["bash: line 1: lilo.ssi: command not found"], False), Status.FAILED,
     "bash: line 1: lilo.ssi: command not found"),
    (_Outcome(0, ["not json"], [], False), Status.FAILED, "--hashes exited with 0 and said "
     "nothing"),
    (_Outcome(0, [answer("no-boot-partition", reason="no LABEL=x")], [], False),
     Status.NO_BOOT_PARTITION, "no LABEL=x"),
    (_Outcome(0, ['{"status": "ok", "pair": {"kernel": 3}}'], [], False), Status.FAILED,
     "unexpected answer to --hashes"),
])
def test_answers_that_end_a_node(pair_files: tuple[Path, Path], outcome: _Outcome,
                                 status: Status, detail: str) -> None:
    with pairspool.staged(*pair_files, "root=/dev/sda") as staged:
        push = make_push(staged)
        assert push.ask("10.77.0.11", outcome) == []
        got = push.results["10.77.0.11"]
        assert got.status is status and got.detail.startswith(detail)


def test_install_answers(pair_files: tuple[Path, Path]) -> None:
    with pairspool.staged(*pair_files, "root=/dev/sda") as staged:
        push = make_push(staged)
        push.installed("10.77.0.11", _Outcome(1, [json.dumps(
            {"status": "failed", "reason": "No space left on device"})], [], False))
        got = push.results["10.77.0.11"]
        assert (got.status, got.detail, got.sent_bytes) == (
            Status.FAILED, "No space left on device", 12000)
        push.installed("10.77.0.11", _Outcome(0, [json.dumps({"status": "updated"})], [],
                                              False))
        assert push.results["10.77.0.11"].status is Status.UPDATED
        push.installed("10.77.0.11", _Outcome(0, [json.dumps(
            {"status": "skipped", "reason": "mid-update"})], [], False))
        got = push.results["10.77.0.11"]
        assert (got.status, got.detail) == (Status.FAILED, "skipped: mid-update")


# -- the spool: what the admin stages is what the node accepts, and nothing else


def test_staged_spool_is_received_intact(pair_files: tuple[Path, Path]) -> None:
    with pairspool.staged(*pair_files, "BOOT_IMAGE=x root=/dev/sda quiet") as staged:
        assert staged.path.name == f"lilo.ssi-{staged.pair.ident()}"
        assert staged.payload_bytes == 12000
        kernel, initrd, pair = pairspool.receive(staged.path)
        assert kernel.read_bytes() == b"K" * 5000 and initrd.read_bytes() == b"I" * 7000
        # The loader's own words are not part of what a node keeps.
        assert pair == staged.pair and pair.append == "root=/dev/sda quiet"


def test_truncated_spool_is_refused(pair_files: tuple[Path, Path]) -> None:
    with pairspool.staged(*pair_files, "root=/dev/sda") as staged:
        os.truncate(staged.path / pairspool.INITRD, 100)
        with pytest.raises(SsiError, match="received 100 bytes") as e:
            pairspool.receive(staged.path)
        assert e.value.hint is not None and "push again" in e.value.hint


def test_foreign_spool_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(SsiError, match=r"not a lilo\.ssi spool"):
        pairspool.receive(other)
    shared = tmp_path / "lilo.ssi-0123"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(SsiError, match="not a directory of ours"):
        pairspool.receive(shared)


def test_spool_in_a_directory_others_may_write_is_refused(
        tmp_path: Path, pair_files: tuple[Path, Path]) -> None:
    with pairspool.staged(*pair_files, "root=/dev/sda") as staged:
        public = tmp_path / "public"
        public.mkdir()
        public.chmod(0o1777)  # a /tmp: anyone could have made or could swap the spool
        moved = public / staged.path.name
        staged.path.rename(moved)
        with pytest.raises(SsiError, match="writable by others") as e:
            pairspool.receive(moved)
        assert e.value.hint is not None and "--remote-spool" in e.value.hint
        moved.rename(staged.path)


# -- the node's own partition


def test_installed_pair_hashes_the_files_the_config_names(tmp_path: Path) -> None:
    (tmp_path / "ssi" / "a").mkdir(parents=True)  # slot a: where member_name puts a pair
    ids = {}
    for role, data in (("kernel", b"k" * 300), ("initrd", b"i" * 500)):
        probe = tmp_path / role
        probe.write_bytes(data)
        ids[role] = pairspool.wanted_pair(probe, probe, "x").kernel
        (tmp_path / member_name(role, ids[role].xxh3_128)).write_bytes(data)
        probe.unlink()
    local = LocalPair(PairMember(member_name("kernel", ids["kernel"].xxh3_128), ids["kernel"]),
                      PairMember(member_name("initrd", ids["initrd"].xxh3_128), ids["initrd"]),
                      "root=/dev/sda")
    assert localnode.installed_pair(tmp_path) is None
    (tmp_path / "extlinux.conf").write_bytes(EXTLINUX.render(local))
    assert localnode.installed_pair(tmp_path) == pairspool.Pair(ids["kernel"], ids["initrd"],
                                                                "root=/dev/sda")
    # A damaged local copy reads as what it is, so the admin side sends the pair again.
    (tmp_path / local.initrd.name).write_bytes(b"i" * 499 + b"X")
    damaged = localnode.installed_pair(tmp_path)
    assert damaged is not None and damaged.initrd != ids["initrd"]


def test_a_nodes_reply_is_capped_and_deep_json_is_no_answer() -> None:
    from mkinitrd_ssi.push import fanout

    collector = fanout._Collector(lambda node: None)
    for _ in range(100):
        collector.ev_read(None, "n1", "stdout", b"x" * (fanout.MAX_LINE * 2))
    kept = collector.out["n1"]
    assert sum(map(len, kept)) <= fanout.MAX_REPLY + fanout.MAX_LINE
    assert all(len(line) <= fanout.MAX_LINE for line in kept)
    assert kept[-1] == "(reply cut: over 1 MiB)"
    deep = "{\"pair\": " + "[" * 200_000 + "]" * 200_000 + "}"
    assert _Outcome(0, [deep], [], False).json() is None  # no RecursionError
    assert _Outcome(0, ['{"a": [[1]]}'], [], False).json() == {"a": [[1]]}


def test_node_text_is_escaped_and_bounded() -> None:
    from mkinitrd_ssi.push.report import MAX_DETAIL, shown

    assert shown("ok: wrote kernel") == "ok: wrote kernel"
    assert shown("\x1b[2J\x1b]0;t\x07x\u2028") == "\\x1b[2J\\x1b]0;t\\x07x\\u2028"
    assert len(shown("y" * 10_000)) == MAX_DETAIL
