"""lilo.ssi: install the default kernel and ramdisk, publish them for network boot,
and push them to the boot partitions of the running local-boot nodes.

Only the publishing side imports ClusterShell: `lilo.ssi --local-only`, which
runs on every node at each push, stays light.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mkinitrd_ssi import cli
from mkinitrd_ssi.atomic import staged_file
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.local.partition import publish_manifest
from mkinitrd_ssi.netboot import publish
from mkinitrd_ssi.netboot.cmdline_file import cluster_cmdline
from mkinitrd_ssi.netboot.http_url import kept_http_url
from mkinitrd_ssi.run import log

if TYPE_CHECKING:  # ClusterShell only where the push or --servers run
    from mkinitrd_ssi.push.fanout import PushOptions

PROG = "lilo.ssi"
BUILT_INITRD = "/boot/initrd-ssi.img"  # mkinitrd.ssi's default output


def build_parser() -> argparse.ArgumentParser:
    parser = cli.common_parser(PROG, "Install the shared root's default kernel and ramdisk, "
                               "publish them for network boot (iPXE and PXELINUX; UEFI: shim "
                               "and GRUB), and sync them to the boot partition of every "
                               "running node with the local boot flag (over ssh, with "
                               "ClusterShell).")
    parser.add_argument("--kernel", type=Path, metavar="FILE",
                        help="kernel to publish (default: ROOT/boot/vmlinuz)")
    parser.add_argument("--initrd", type=Path, metavar="FILE",
                        help="ramdisk to publish (default: ROOT/boot/initrd.img, after "
                        "installing a newer ROOT/boot/initrd-ssi.img there)")
    parser.add_argument("--cmdline", metavar="ARGS",
                        help="kernel arguments of the cluster, e.g. 'root=LABEL=ssiroot "
                        "console=ttyS0'; kept in ROOT/etc/ssi/cmdline for later runs")
    parser.add_argument("--http-url", metavar="URL",
                        help="iPXE and GRUB fetch kernel and ramdisk over HTTP from URL, "
                        "which maps onto the tftpboot directory (e.g. http://10.77.0.1/; "
                        "http://{server}/ is each node's boot server, as DHCP names it); kept "
                        "in ROOT/etc/ssi/http-url for later runs, '' clears it (TFTP again)")
    parser.add_argument("--tftpboot", type=Path, metavar="DIR",
                        help="network-boot directory (default: ROOT/tftpboot)")
    parser.add_argument("--json", action="store_true",
                        help="print the outcome as JSON on stdout (for scripts)")
    _local_arguments(parser.add_argument_group("this node's boot partition (--local-only)"))
    _push_arguments(parser.add_argument_group("push to the local-boot nodes, after publishing"))
    _server_arguments(parser.add_argument_group(
        "copy the published tree to every boot server (ssh options as for the push)"))
    _provision_arguments(parser.add_argument_group(
        "make a partition ready for local boot (--provision)"))
    return parser


def _local_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--local-only", action="store_true",
                       help="only sync this machine's local boot partition")
    group.add_argument("--boot-dir", type=Path, metavar="DIR",
                       help="the boot partition, already mounted here (default: this "
                       "node's bootdev from ssitab, mounted for the sync)")
    group.add_argument("--hashes", action="store_true",
                       help="print the sizes, xxh3-128 hashes and kernel arguments of the "
                       "pair on the boot partition as JSON; change nothing")
    group.add_argument("--from", dest="from_spool", type=Path, metavar="SPOOL",
                       help="install the pair pushed into SPOOL by lilo.ssi on the admin "
                       "node, then remove SPOOL")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def _push_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--no-push", action="store_true",
                       help="only publish; leave the nodes' boot partitions alone")
    group.add_argument("--nodes", metavar="SET",
                       help="only these local-boot nodes: ssitab numbers (1-4,7) or a "
                       "ClusterShell node set of hostnames (node[1-4])")
    group.add_argument("--fanout", type=_positive, default=64, metavar="N",
                       help="nodes worked on at once (default: 64, ClusterShell's)")
    group.add_argument("--address", choices=("ip", "hostname"), default="ip",
                       help="reach nodes by their ssitab address (default: works without "
                       "DNS) or by their ssitab hostname (for ssh_config or tree-mode "
                       "topologies that name hosts)")
    group.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                       help="an ssh -o option for every ssh and scp, e.g. "
                       "IdentityFile=/root/.ssh/push_key or Port=2222 (repeatable)")
    group.add_argument("--connect-timeout", type=_positive, default=5, metavar="S",
                       help="a node that does not accept ssh within S seconds is down "
                       "(default: 5)")
    group.add_argument("--timeout", type=_positive, default=600, metavar="S",
                       help="limit for each node's copy and install (default: 600)")
    group.add_argument("--remote-lilo", default="lilo.ssi", metavar="CMD",
                       help="lilo.ssi on the nodes, with any prefix or options "
                       "(default: lilo.ssi)")
    group.add_argument("--remote-spool", default="/run", metavar="DIR",
                       help="node-local directory, writable by root only, that receives "
                       "the pair (default: /run)")


def _server_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--servers", metavar="SET",
                       help="boot servers (a ClusterShell node set, e.g. boot[1-4]) that get "
                       "the same content-named set, loaders and configs, after publishing here")
    group.add_argument("--server-tftpboot", default="/tftpboot", metavar="DIR",
                       help="the tftpboot directory on the boot servers (default: %(default)s)")
    group.add_argument("--install-published", type=Path, metavar="SPOOL",
                       help="(run on a boot server by --servers) install the tree received "
                       "in SPOOL into --tftpboot DIR, then remove SPOOL")


def _provision_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--provision", type=Path, metavar="DEVICE",
                       help="make DEVICE ready for local boot, then stop: a whole disk or a "
                       "disk image file gets a new dos table with one active partition and "
                       "Syslinux's mbr.bin; an existing partition gets the filesystem only (and "
                       "mbr.bin where its disk's boot code is blank); extlinux either way (--fs "
                       "esp: no mbr.bin, EFI System Partition type)")
    group.add_argument("--force", action="store_true",
                       help="overwrite a DEVICE that holds a filesystem, a partition table or "
                       "data (a device in use is refused all the same)")
    group.add_argument("--fs", choices=("ext4", "vfat", "esp"), default="ext4",
                       help="filesystem of the boot partition (default: ext4); esp: an EFI "
                       "System Partition (FAT, type ef) for UEFI, into which the first sync "
                       "installs shim and GRUB")
    group.add_argument("--label", metavar="LABEL",
                       help="its label (default: this node's LABEL= bootdev in ssitab, else "
                       "ssiboot)")
    group.add_argument("--size", type=_positive, metavar="MIB",
                       help="create DEVICE as a sparse disk image file of MIB MiB (it must not "
                       "exist)")


def _default_initrd(root: cli.Root, dry_run: bool) -> Path:
    """ROOT/boot/initrd.img, replaced first by a newer mkinitrd.ssi build."""
    default, built = root("/boot/initrd.img"), root(BUILT_INITRD)
    if built.is_file() and (not default.is_file()
                            or (built.stat().st_mtime > default.stat().st_mtime
                            and built.read_bytes() != default.read_bytes())):
        print(f"installing {built} as the default ramdisk {default}")
        if not dry_run:
            with staged_file(default) as tmp:
                shutil.copyfile(built, tmp)
    return default


def _usage(message: str) -> SsiError:
    error = SsiError(message, hint="see lilo.ssi --help")
    error.exit_code = 2
    return error


def _check_provision(args: argparse.Namespace) -> None:
    if args.provision is None:
        for name, given in (("--force", args.force), ("--label", args.label is not None),
                            ("--size", args.size is not None), ("--fs", args.fs != "ext4")):
            if given:
                raise _usage(f"{name} needs --provision DEVICE")
        return
    # Provisioning makes an empty partition; the pair comes with the first sync.
    for name, given in (("--local-only", args.local_only), ("--cmdline", args.cmdline),
                        ("--kernel", args.kernel), ("--initrd", args.initrd),
                        ("--json", args.json), ("--nodes", args.nodes)):
        if given:
            raise _usage(f"{name} does not go with --provision")
    from mkinitrd_ssi.local.provision import label_problem

    problem = None if args.label is None else label_problem(args.label, args.fs)
    if problem is not None:
        raise _usage(problem)


def _check_modes(args: argparse.Namespace) -> None:
    _check_provision(args)
    if not args.local_only:
        for name, given in (("--boot-dir", args.boot_dir), ("--hashes", args.hashes),
                            ("--from", args.from_spool)):
            if given:
                raise _usage(f"{name} needs --local-only")
    elif args.hashes and args.from_spool:
        raise _usage("--hashes and --from do not go together")


def run(args: argparse.Namespace) -> int:
    _check_modes(args)
    root = cli.Root(args.root)
    if args.provision is not None:
        from mkinitrd_ssi.local import provision

        return provision.run(provision.ProvisionOptions(
            device=args.provision, ssitab=cli.ssitab_path(args),
            ssitab_given=args.ssitab is not None, force=args.force, fs=args.fs,
            label=args.label, size=args.size, dry_run=args.dry_run))
    if args.local_only:
        from mkinitrd_ssi.local import command

        return command.run(command.LocalOptions(
            root=root, ssitab=cli.ssitab_path(args), boot_dir=args.boot_dir,
            hashes=args.hashes, from_spool=args.from_spool, json=args.json,
            dry_run=args.dry_run, kernel=args.kernel, initrd=args.initrd,
            cmdline=args.cmdline))
    if args.install_published is not None:
        return _install_published(args.install_published, args.tftpboot or root("/tftpboot"),
                                  args.json)
    cmdline = cluster_cmdline(root, args.cmdline, keep=True, dry_run=args.dry_run)
    http_url = kept_http_url(root, args.http_url, dry_run=args.dry_run)
    kernel = args.kernel or root("/boot/vmlinuz")
    initrd = args.initrd or _default_initrd(root, args.dry_run)
    tftpboot = args.tftpboot or root("/tftpboot")
    log.info("publishing %s + %s into %s with: %s", kernel, initrd, tftpboot, cmdline)
    out = sys.stderr if args.json else sys.stdout
    if args.dry_run:
        print(f"would publish {kernel} and {initrd} into {tftpboot} with: {cmdline}", file=out)
        published: dict[str, Any] = {"set": None, "changed": []}
    else:
        result = publish.publish(tftpboot, kernel, initrd, cmdline, root=root("/"),
                                 http_url=http_url)
        if kernel.parent == initrd.parent == root("/boot"):
            # Booting local nodes copy the shared root's default pair only when
            # it matches this manifest, so they never take a half-installed one.
            publish_manifest(kernel, initrd)
        state = "published: " + ", ".join(result.changed) if result.changed else "unchanged"
        print(f"{tftpboot}: {state} (set {result.set_name})", file=out)
        published = {"set": result.set_name, "changed": result.changed}
        # Push what was published, byte for byte: the content-named set never changes.
        kernel = tftpboot / publish.SETS_DIR / result.set_name / "vmlinuz"
        initrd = tftpboot / publish.SETS_DIR / result.set_name / "initrd.img"
    from mkinitrd_ssi.push import command as push
    from mkinitrd_ssi.push.fanout import PushOptions

    transport = PushOptions(fanout=args.fanout, connect_timeout=args.connect_timeout,
                            timeout=args.timeout, ssh_options=tuple(args.ssh_option),
                            remote_lilo=args.remote_lilo, remote_spool=args.remote_spool,
                            dry_run=args.dry_run)
    servers_rc = 0
    if args.servers is not None:
        servers_rc = _to_servers(args.servers, args.server_tftpboot, tftpboot, published,
                                 transport, out)
    if args.no_push:
        return servers_rc
    job = push.PushJob(
        ssitab=cli.ssitab_path(args), ssitab_given=args.ssitab is not None, nodes=args.nodes,
        address=args.address, json=args.json, verbose=args.verbose, transport=transport)
    return max(servers_rc, push.run(job, kernel, initrd, cmdline, published))


def _to_servers(spec: str, remote_dir: str, tftpboot: Path, published: dict[str, Any],
                transport: PushOptions, out: TextIO) -> int:
    """lilo.ssi --servers: the published tree to every boot server; its table on out."""
    from mkinitrd_ssi.netboot import servers

    names = servers.parse_servers(spec)
    if published["set"] is None:  # dry run: nothing was published here to copy
        print(f"would copy the published tree to {len(names)} boot server(s): {spec}", file=out)
        return 0
    results = servers.publish_to_servers(names, tftpboot, published["set"], transport,
                                         remote_dir)
    print(servers.table(results), end="", file=out)
    published["servers"] = [r.as_dict() for r in results]
    return servers.exit_code(results)


def _install_published(spool_dir: Path, tftpboot: Path, as_json: bool) -> int:
    from mkinitrd_ssi.netboot import servers

    try:
        outcome = servers.install(spool_dir, tftpboot)
    except SsiError as e:
        if not as_json:
            raise
        print(json.dumps({"status": "failed", "reason": str(e)}))
        return 1
    if as_json:
        print(json.dumps(outcome))
    else:
        changed = ", ".join(outcome["changed"])
        print(f"{tftpboot}: {outcome['status']}{': ' + changed if changed else ''} "
              f"(set {outcome['set']})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, build_parser(), run, argv)


entry = cli.entry_point(main)
