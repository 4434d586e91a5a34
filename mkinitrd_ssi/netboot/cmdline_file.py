"""The cluster's kernel arguments, kept in ROOT/etc/ssi/cmdline so later runs reuse them.

Kept in the spelling the one grammar gives (linuxrc_agent.cmdline.join): what the
kernel receives from every config is what this file says (docs/architecture.md,
"Kernel command line: one grammar").
"""

from __future__ import annotations

from linuxrc_agent import cmdline
from mkinitrd_ssi import cli
from mkinitrd_ssi.atomic import replace_if_changed
from mkinitrd_ssi.errors import SsiError
from mkinitrd_ssi.netboot.publish import check_cmdline


def checked(text: str) -> str:
    """--cmdline as the kernel will read it, in the spelling every config keeps."""
    args = check_cmdline(text)
    if not any(w.key == "root" and w.value for w in args.kernel):
        raise SsiError("--cmdline has no root=", hint="name the shared root, e.g. "
                       "--cmdline 'root=LABEL=ssiroot console=ttyS0'")
    return cmdline.join(args)


def cluster_cmdline(root: cli.Root, given: str | None, *, keep: bool, dry_run: bool) -> str:
    """given (kept in ROOT/etc/ssi/cmdline when keep), else the kept one."""
    path = root(cli.CMDLINE_FILE)
    if given is not None:
        text = checked(given)
        if keep and not dry_run:
            replace_if_changed(path, (text + "\n").encode(), backup=False)
        return text
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise SsiError(f"no kernel command line: {path} does not exist",
                       hint="pass it once: lilo.ssi --cmdline 'root=LABEL=ssiroot "
                       "console=ttyS0'") from None
