"""The manifest: sizes and xxh3-128 of a kernel + ramdisk pair, as JSON. The one reader and writer.

lilo.ssi writes MANIFEST_NAME beside the shared root's default pair after it
installs one; a push spool carries one with the kernel arguments added
(mkinitrd_ssi.push.spool). The sync copies a pair only if what it copied
matches (docs/architecture.md, "The local boot partition: commit protocol").

    {"format": 1,
     "kernel": {"name": "vmlinuz", "size": 123, "xxh3_128": "<32 hex>"},
     "initrd": {"name": "initrd.img", "size": 456, "xxh3_128": "<32 hex>"},
     "append": "root=..."}            (push spools only)

json is imported inside the functions: only nodes whose shared root carries
a manifest pay for it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from linuxrc_agent.bootpair.pair import ROLES, FileId, is_digest

MANIFEST_NAME = "ssi-manifest.json"
MANIFEST_FORMAT = 1


class ManifestEntry(NamedTuple):
    name: str  # as lilo.ssi was given it, relative to the manifest's directory
    ident: FileId


def file_id_json(ident: FileId) -> dict[str, Any]:
    return {"size": ident.size, "xxh3_128": ident.xxh3_128}


def file_id_from_json(data: Any, what: str = "file") -> FileId:
    """Raises ValueError unless data is {"size": int >= 0, "xxh3_128": 32 hex digits}."""
    if (not isinstance(data, dict) or type(data.get("size")) is not int or data["size"] < 0
            or not isinstance(data.get("xxh3_128"), str) or not is_digest(data["xxh3_128"])):
        raise ValueError(f"bad or missing {what!r} entry")
    return FileId(data["size"], data["xxh3_128"])


class Manifest(NamedTuple):
    kernel: ManifestEntry
    initrd: ManifestEntry

    def entry(self, role: str) -> ManifestEntry:
        return self.kernel if role == "kernel" else self.initrd

    def to_json(self, append: str | None = None) -> bytes:
        """The manifest; with append, a push spool's (the kernel arguments added)."""
        import json

        doc: dict[str, object] = {"format": MANIFEST_FORMAT}
        for role in ROLES:
            e = self.entry(role)
            doc[role] = {"name": e.name, **file_id_json(e.ident)}
        if append is not None:
            doc["append"] = append
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Raises ValueError on anything but a complete manifest of a known format.

        Keys it does not know are ignored: writers may add their own (a push
        spool adds the kernel arguments) without a new format number.
        """
        return cls.parse_with_append(data)[0]

    @classmethod
    def parse_with_append(cls, data: bytes) -> tuple[Manifest, str | None]:
        """parse, and the kernel arguments a push spool's manifest carries (None: not there)."""
        import json

        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a format {MANIFEST_FORMAT} manifest")
        entries = []
        for role in ROLES:
            e = doc.get(role)
            if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                raise ValueError(f"bad or missing {role!r} entry")
            entries.append(ManifestEntry(e["name"], file_id_from_json(e, role)))
        append = doc.get("append")
        return cls(entries[0], entries[1]), append if isinstance(append, str) else None
