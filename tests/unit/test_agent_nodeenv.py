"""/run/ssi/node.env: rendering, shell quoting (checked by a real sh), atomic write."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linuxrc_agent.nodeenv import NodeEnv, quote, write

# The contract's keys (README "The agent": node.env), every one always present.
KEYS = ["SSI_NODE", "SSI_IP", "SSI_PREFIX", "SSI_MAC", "SSI_IFACE", "SSI_HOSTNAME",
        "SSI_LOCAL_BOOT", "SSI_SYNC", "SSI_BOOT_MS", "SSI_STAGES_MS", "SSI_ROOT",
        "SSI_OVERLAY", "SSI_FIRMWARE", "SSI_SECURE_BOOT"]


def test_empty_identity() -> None:
    text = NodeEnv(boot_ms=1234).render()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ["SSI_NODE=", "SSI_IP=", "SSI_PREFIX=", "SSI_MAC=", "SSI_IFACE=",
                     "SSI_HOSTNAME=", "SSI_LOCAL_BOOT=0", "SSI_SYNC=skipped",
                     "SSI_BOOT_MS=1234", "SSI_STAGES_MS=", "SSI_ROOT=", "SSI_OVERLAY=",
                     "SSI_FIRMWARE=bios", "SSI_SECURE_BOOT=0"]


def test_full_identity() -> None:
    env = NodeEnv(node=3, ip="10.77.0.13", prefix=24, mac="52:54:00:12:34:03", iface="ens3",
                  hostname="n3", local_boot=True, sync="updated", boot_ms=2500,
                  stages_ms="modules:310 devices:40", root="nfs4:10.0.0.1:/srv/root",
                  overlay="tmpfs", firmware="uefi", secure_boot=True)
    assert dict(env.items()) == {
        "SSI_NODE": "3", "SSI_IP": "10.77.0.13", "SSI_PREFIX": "24",
        "SSI_MAC": "52:54:00:12:34:03", "SSI_IFACE": "ens3", "SSI_HOSTNAME": "n3",
        "SSI_LOCAL_BOOT": "1", "SSI_SYNC": "updated", "SSI_BOOT_MS": "2500",
        "SSI_STAGES_MS": "modules:310 devices:40", "SSI_ROOT": "nfs4:10.0.0.1:/srv/root",
        "SSI_OVERLAY": "tmpfs", "SSI_FIRMWARE": "uefi", "SSI_SECURE_BOOT": "1"}
    assert [k for k, _ in env.items()] == KEYS
    assert "SSI_MAC=52:54:00:12:34:03\n" in env.render()


def test_bad_sync_state_is_a_bug() -> None:
    with pytest.raises(ValueError, match="SSI_SYNC"):
        NodeEnv(sync="maybe")


def _source(path: Path, key: str) -> str:
    out = subprocess.run(["sh", "-c", f'. "$1" && printf %s "${key}"', "sh", str(path)],
                         check=True, capture_output=True)
    return out.stdout.decode("utf-8", "surrogateescape")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"),
               max_size=30))
def test_quoting_round_trips_through_sh(tmp_path_factory: pytest.TempPathFactory,
                                        value: str) -> None:
    path = tmp_path_factory.mktemp("env") / "node.env"
    write(NodeEnv(hostname=value, iface=value), str(path))
    assert _source(path, "SSI_HOSTNAME") == value
    assert _source(path, "SSI_IFACE") == value


@pytest.mark.parametrize("value", ["", "plain", "it's", "$(reboot)", "a b", "~root", "*",
                                   "x;y", "\n", "`id`", '"'])
def test_quote(value: str) -> None:
    out = subprocess.run(["sh", "-c", f"printf %s {quote(value)}"], check=True,
                         capture_output=True, text=True)
    assert out.stdout == value


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "run" / "ssi" / "node.env"
    write(NodeEnv(boot_ms=1), str(path))
    write(NodeEnv(boot_ms=2), str(path))
    assert "SSI_BOOT_MS=2\n" in path.read_text()
    assert os.listdir(path.parent) == ["node.env"]  # no temp file left behind
    assert path.stat().st_mode & 0o777 == 0o644


def test_sync_states_are_the_enums() -> None:
    from linuxrc_agent.nodeenv import SYNC_STATES, SyncStatus

    assert SYNC_STATES == ("updated", "unchanged", "no-boot-partition", "skipped", "failed")
    assert all(NodeEnv(sync=s.value).sync == s.value for s in SyncStatus)


def test_firmware_and_secure_boot_from_sysfs_and_efivarfs(tmp_path: Path) -> None:
    from linuxrc_agent import firmware

    assert firmware.kind(str(tmp_path / "efi")) == "bios"
    (tmp_path / "efi").mkdir()
    assert firmware.kind(str(tmp_path / "efi")) == "uefi"
    var = tmp_path / firmware.SECURE_BOOT_VAR
    assert firmware.secure_boot(str(tmp_path)) is False  # no variable: not enforced
    var.write_bytes(b"\x06\x00\x00\x00\x01")  # attributes, then the value
    assert firmware.secure_boot(str(tmp_path)) is True
    var.write_bytes(b"\x06\x00\x00\x00\x00")
    assert firmware.secure_boot(str(tmp_path)) is False
