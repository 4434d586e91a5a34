"""The kernel arguments a local boot entry persists, from the command line the node booted with."""

from __future__ import annotations

from linuxrc_agent import cmdline

# x86 COMMAND_LINE_SIZE is 2048 including the terminating NUL.
MAX_APPEND = 2047
# Words a boot path adds by itself: persisting them would make the local
# config differ between a netboot and a local boot, and rewrite it each time.
TRANSPORT_KEYS = frozenset({"BOOT_IMAGE", "initrd", "BOOTIF", "ssi.bootif", "ssi.break"})


def local_append(text: str) -> str:
    """The kernel arguments for the local entry, from the agent's /proc/cmdline.

    Drops the words a loader adds (BOOT_IMAGE=, initrd=, BOOTIF=, ssi.bootif=)
    and one-off ssi.break, by key as the kernel reads them (a quoted
    "ssi.break=root" too), so that booting from the network or from the disk
    yields the same config and neither rewrites it.
    """
    args = cmdline.without(text, TRANSPORT_KEYS)
    # PXELINUX's IPAPPEND puts BOOTIF= last, after init's `--` if there is one.
    init = None if args.init is None else tuple(w for w in args.init if w.key != "BOOTIF")
    # A line break inside quotes would end extlinux.conf's APPEND line early.
    fits = [w for w in cmdline.words_of(cmdline.Args(args.kernel, init))
            if all(c.isprintable() or c == " " for c in w.raw)]
    return cmdline.join(fits, lenient=True)


def problem(append: str) -> str | None:
    """Why append cannot go into a boot entry, or None."""
    if any(c in append for c in "\n\r\0"):
        return "kernel arguments must be one line"
    if append != append.strip(" \t"):
        # A config keeps them no better than the kernel does.
        return "kernel arguments must not begin or end with blanks"
    if len(append.encode()) > MAX_APPEND:
        return f"kernel arguments are {len(append.encode())} bytes, the kernel takes {MAX_APPEND}"
    return None
