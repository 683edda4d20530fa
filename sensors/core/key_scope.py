"""What an allow-listed sensor key may say, and who may change the allow-lists (docs/security.md,
"Key scope").

A sensor key's allow-list file (``DIR/sensors/NAME.key``, ZeroMQ's certificate format) carries
its **scope** in the file's ``metadata`` section, which ZeroMQ's own readers skip::

    metadata
        topics = "lidar"                 # input modalities, and ``gt`` for the ground-truth role
        sources = "lidar-front"          # optional: the ``src`` names it may use (any when absent)
    curve
        public-key = "..."

A message whose topic or ``src`` lies outside its key's scope is dropped and counted (reason
``scope``). **A file without a scope** (written before scopes existed) may send every input
modality under any ``src``, and never ``gt``: existing stations keep working, ground truth needs an
explicit grant, and the runtime names such keys at start with the command that scopes them
(``runtime keys scope DIR NAME --modality ...``).

Permissions, as ssh's StrictModes: the key directory, its allow-list folders and their files must
belong to this user (or root) and must not be writable by group or others; else the runtime
refuses to start, since anyone who can write there can allow-list a key of their own.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sensors.core import schema

SCOPE_TOPICS: tuple[str, ...] = (*schema.MODALITIES, schema.GT_TOPIC)   # what a scope may grant
DEFAULT_TOPICS: frozenset[str] = frozenset(schema.MODALITIES)          # a file without a scope: no gt
_SRC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
_LINE = re.compile(r'^\s+([A-Za-z0-9_-]+)\s*=\s*"?([^"]*)"?\s*$')


class KeyFileError(ValueError):
    """A key file or directory that cannot be used (message says what to do)."""


class ScopeError(KeyFileError):
    """An allow-list entry whose scope, or a key folder whose permissions, cannot be used."""


@dataclass(frozen=True)
class KeyScope:
    """The topics (and optionally the ``src`` names) one allow-listed key may send."""

    name: str                               # the allow-list entry (file stem)
    topics: frozenset[str] = DEFAULT_TOPICS
    sources: frozenset[str] | None = None   # None: any src
    explicit: bool = True                   # False: the file carries no scope (the default applies)

    def __post_init__(self):
        unknown = set(self.topics) - set(SCOPE_TOPICS)
        if unknown or not self.topics:
            raise ScopeError(f"key {self.name!r}: scope topics must be among {SCOPE_TOPICS} (at least one), got "
                             f"{sorted(self.topics)}")
        bad = [s for s in self.sources or () if not _SRC.match(s)]
        if bad or self.sources == frozenset():
            raise ScopeError(f"key {self.name!r}: src names must be 1-128 letters, digits or _.:@/- (at least one "
                             f"when given), got {sorted(self.sources or ())}")

    def allows(self, topic: str, src: str) -> bool:
        return topic in self.topics and (self.sources is None or src in self.sources)

    def describe(self) -> str:
        topics = ",".join(t for t in SCOPE_TOPICS if t in self.topics)
        srcs = "any src" if self.sources is None else "src " + ",".join(sorted(self.sources))
        return f"{topics}; {srcs}{'' if self.explicit else ' (no scope in the file: the default)'}"

    def metadata(self) -> dict[str, str]:
        out = {"topics": " ".join(t for t in SCOPE_TOPICS if t in self.topics)}
        if self.sources is not None:
            out["sources"] = " ".join(sorted(self.sources))
        return out


def make_scope(name: str, modalities: Iterable[str] = (), ground_truth: bool = False,
               sources: Iterable[str] | None = None) -> KeyScope:
    """A scope from command-line terms: ``modalities`` (``all`` = every input modality), the
    ground-truth role, optional ``src`` names."""
    topics = set()
    for m in modalities:
        topics |= set(schema.MODALITIES) if m == "all" else {m}
    if ground_truth:
        topics.add(schema.GT_TOPIC)
    return KeyScope(name, frozenset(topics), None if sources is None else frozenset(sources))


def _split(value: str) -> frozenset[str]:
    return frozenset(v for v in re.split(r"[\s,]+", value.strip()) if v)


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata`` section of a ZeroMQ certificate file."""
    out, section = {}, None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            section = line.strip()
            continue
        m = _LINE.match(line)
        if section == "metadata" and m:
            out[m.group(1)] = m.group(2)
    return out


def read_scope(path: Path) -> KeyScope:
    """The scope of the allow-list file ``path`` (the default when it carries none)."""
    meta = read_metadata(path)
    if "topics" not in meta:
        if "sources" in meta:
            raise ScopeError(f"{path}: a scope with sources needs topics too (runtime keys scope ...)")
        return KeyScope(path.stem, explicit=False)
    try:
        return KeyScope(path.stem, _split(meta["topics"]), _split(meta["sources"]) if "sources" in meta else None)
    except ScopeError as err:
        raise ScopeError(f"{path}: {err}") from err


def write_entry(path: Path, public: bytes | str, scope: KeyScope) -> None:
    """An allow-list file: ZeroMQ's certificate format with the scope in its metadata (0600)."""
    public = public.decode() if isinstance(public, bytes) else public
    lines = ["#   ZeroMQ CURVE Public Certificate, allow-listed for the sensor socket (runtime keys)",
             "#   metadata: the topics and src names this key may send (docs/security.md, \"Key scope\")", "",
             "metadata", *(f'    {k} = "{v}"' for k, v in scope.metadata().items()),
             "curve", f'    public-key = "{public}"', ""]
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)


def check_not_writable(path: Path, what: str) -> None:
    """Refuse ``path`` when group or others may write it, or when it belongs to someone else."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise ScopeError(f"{what} {path} has mode {oct(mode)}: group or others can write it, so anyone on this host "
                         f"could allow-list a key of their own. Fix with: chmod go-w {path}")
    if st.st_uid not in (0, os.geteuid()):
        raise ScopeError(f"{what} {path} belongs to uid {st.st_uid}, neither this user ({os.geteuid()}) nor root: "
                         f"another account could allow-list keys. Fix with: chown {os.geteuid()} {path}")
