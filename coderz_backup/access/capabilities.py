"""What an access can do: small capability interfaces, declared, never probed.

Every access class lists the capabilities it implements in ``capabilities`` (a frozenset of
the protocol classes below) and has their methods. A service never looks at the access's
type or probes for a method; it asks:

- ``has(access, Freezable)`` where its code branches on an optional ability (a type guard:
  inside the ``if`` the access is typed as that capability);
- ``require(access, Freezable, "…; nothing changed")`` where it cannot go on without one:
  the access comes back typed, or the given message is raised (an
  :class:`~coderz_backup.errors.AccessError` unless ``error=`` says otherwise).

Capabilities with methods: :class:`Commands`, :class:`Files`, :class:`Archives`,
:class:`Lifecycle` (every access; together they are :class:`Access`), and the optional
:class:`Freezable`, :class:`DataDirOps`, :class:`ReplaceCheck`, :class:`Precheck`,
:class:`Shell`, :class:`ContainerControl`. Markers (a promise, no methods of their own):
:class:`HostFiles` (paths are this host's files: ``open()`` and ``os.*`` reach them) and
:class:`ManagedLifecycle` (stop/start work without configured commands: a container).
The table of which access implements which is in :mod:`coderz_backup.access`.
"""

from __future__ import annotations

import contextlib
from typing import BinaryIO, Iterable, Mapping, Protocol, Sequence, TypeGuard, TypeVar, cast

from ..errors import AccessError
from .commands import CommandStream

__all__ = [
    "ALL_CAPABILITIES", "Access", "Archives", "Capability", "Commands", "ContainerControl", "DataDirOps",
    "Files", "Freezable", "HostFiles", "Lifecycle", "ManagedLifecycle", "Precheck", "ReplaceCheck", "Shell",
    "has", "members", "require",
]

C = TypeVar("C")


class Capability(Protocol):
    """What every capability shares: a description for messages and the declared capabilities."""

    description: str
    capabilities: frozenset[type]


class Commands(Capability, Protocol):
    """Run commands where the service runs; stdout as a stream, text or fed from chunks."""

    def stream(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               timeout: float | None = None, label: str | None = None) -> CommandStream:
        """Start ``argv`` and return its stdout as a stream (a context manager)."""

    def feed(self, argv: Sequence[str], chunks: Iterable[bytes], *, env: Mapping[str, str] | None = None,
             timeout: float | None = None, label: str | None = None) -> str:
        """Run ``argv`` with ``chunks`` on stdin; return its stdout text; raise on failure."""

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, label: str | None = None) -> str:
        """Run ``argv`` to completion; return stdout text; raise ProducerError on failure."""


class Files(Capability, Protocol):
    """Read, test and delete the service's files."""

    def open_read(self, path: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Open a file of the service for reading (binary)."""

    def readable(self, path: str) -> bool:
        """True when the file or folder ``path`` exists and can be read through this access."""

    def remove_tree(self, path: str) -> None:
        """Delete file or folder ``path`` (missing is fine)."""


class Archives(Capability, Protocol):
    """Folders out as tar streams, tar streams into folders."""

    def tar_dir(self, path: str, out: BinaryIO, *, exclude: Sequence[str] = ()) -> int:
        """Write an uncompressed tar stream of the *contents* of folder ``path`` into ``out``.

        Member names are relative to ``path`` (``meta.json``, ``01H…/index``); modes,
        owners and mtimes are kept. ``exclude`` holds top-level names to leave out.
        Returns the number of entries written. Raises AccessError when ``path`` is missing.
        """

    def untar_into(self, path: str, chunks: Iterable[bytes]) -> int:
        """Extract a tar stream (as written by :meth:`tar_dir`) into the existing folder ``path``.

        Every member is checked first: absolute names, ``..`` and links leaving ``path``
        are refused. Owners are kept (numeric). Returns the number of entries.
        """


class Lifecycle(Capability, Protocol):
    """Stop and start the service: its container, or the configured command."""

    def stop_service(self, command: Sequence[str] | None, *, timeout: float = 120) -> bool:
        """Stop the service: its container, or run ``command``. False when there is no way to."""

    def start_service(self, command: Sequence[str] | None, *, timeout: float = 120) -> bool:
        """Start the service again: its container, or run ``command``. False when there is no way to."""


class ManagedLifecycle(Lifecycle, Protocol):
    """Marker: stop_service/start_service work without configured commands (the service is a container)."""


class HostFiles(Capability, Protocol):
    """Marker: the paths this access reads and writes are this host's file system (``open()`` works)."""


class Freezable(Capability, Protocol):
    """Hold the service still while its files are copied (Docker: pause/unpause)."""

    def frozen(self) -> contextlib.AbstractContextManager[None]:
        """Pause the service for the ``with`` block (when it runs); always resume it."""


class DataDirOps(Capability, Protocol):
    """Work on a data dir where it lives: keep its contents aside, fix ownership after an extract."""

    def move_contents(self, src: str, dest: str) -> None:
        """Move everything inside ``src`` into a new folder ``dest`` (e.g. to keep the old data)."""

    def chown_like_parent(self, path: str) -> None:
        """chown -R ``path`` to the owner of the folder itself (after an extract as root)."""


class ReplaceCheck(Capability, Protocol):
    """Say before anything is stopped whether a data dir can be replaced through this access."""

    def check_replaceable(self, data_dir: str) -> None:
        """Raise AccessError when replacing ``data_dir`` here would not work (nothing changed yet)."""


class Precheck(Capability, Protocol):
    """A cheap check before a backup starts (the container exists and runs, the volume exists)."""

    def precheck(self) -> None:
        """Raise AccessError when the service cannot be reached through this access."""


class Shell(Capability, Protocol):
    """``sh -c`` scripts on the far side, as root where the access can (file work never happens here)."""

    def shell(self, script: str, *args: str, timeout: float = 600, label: str = "sh") -> None:
        """Run ``sh -c script sh args…`` where the service's files are; raise on failure."""


class ContainerControl(ManagedLifecycle, Protocol):
    """A named container: whether it runs, stop and start it (e.g. one stopped while another is restored)."""

    def is_running(self) -> bool:
        """True when the container's state is ``running``."""

    def stop_service(self, command: Sequence[str] | None = None, *, timeout: float = 120) -> bool:
        """Stop the container (``command`` is not needed)."""

    def start_service(self, command: Sequence[str] | None = None, *, timeout: float = 120) -> bool:
        """Start the container and wait until it runs (healthy, when it has a health check)."""


class Access(Commands, Files, Archives, Lifecycle, Protocol):
    """Where a service's commands run and its files are read: what every access implements."""


#: every capability an access may declare, in the order of the table in :mod:`coderz_backup.access`
ALL_CAPABILITIES: tuple[type, ...] = (Commands, Files, Archives, Lifecycle, ManagedLifecycle, HostFiles,
                                      Freezable, DataDirOps, ReplaceCheck, Precheck, Shell, ContainerControl)

#: what a missing capability means, for the default :func:`require` message
_ABILITY: dict[type, str] = {
    Commands: "run commands",
    Files: "read the service's files",
    Archives: "copy folders as tar streams",
    Lifecycle: "stop and start the service",
    ManagedLifecycle: "stop and start the service without stop_command/start_command",
    HostFiles: "reach this host's files",
    Freezable: "pause the service while its files are copied",
    DataDirOps: "move a data dir's contents aside or set their owner",
    ReplaceCheck: "check that a data dir can be replaced",
    Precheck: "check the service before a backup",
    Shell: "run shell scripts where the service's files are",
    ContainerControl: "control a container",
}

_BASES = frozenset({Capability, Protocol, object})


def members(cap: type) -> frozenset[str]:
    """The methods a capability asks for (its own and those of the capabilities it extends)."""
    names: set[str] = set()
    for klass in cap.__mro__:
        if klass in _BASES or klass.__name__ == "Generic":
            continue
        names.update(n for n, v in vars(klass).items() if not n.startswith("_") and callable(v))
    return frozenset(names)


def has(access: object, cap: type[C]) -> TypeGuard[C]:
    """True when ``access`` declares capability ``cap`` (inside ``if has(…)`` it is typed as ``cap``)."""
    return cap in access.capabilities   # type: ignore[attr-defined]


def require(access: object, cap: type[C], message: str | None = None, *,
            error: type[Exception] = AccessError) -> C:
    """``access`` typed as ``cap`` when it declares it; else raise ``error(message)``.

    Without ``message``: "<description> access cannot <what the capability does>".
    """
    if has(access, cap):
        return cast(C, access)
    what = _ABILITY.get(cap, cap.__name__)
    raise error(message or f"{access.description} access cannot {what}")   # type: ignore[attr-defined]

