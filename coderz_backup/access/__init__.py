"""How commands and files of a service are reached.

A service module asks its access to "run pg_dump and give me stdout as a stream" or "open
this file for reading"; it never knows whether that happens on this host or inside a
container. :func:`access_for` chooses from the service's config:

- :class:`LocalAccess` (:mod:`.local`) — commands run on this host (they may talk to the
  service over the network, as pg_dump does); files are this host's files.
- :class:`DockerAccess` (:mod:`.docker`) — ``container = "…"``: commands through the exec
  API, files with ``get_archive``/``put_archive``; ``volume = "…"`` alone: files of a named
  volume through a helper container (no commands, no lifecycle of its own).
- :class:`PrefixAccess` (:mod:`.prefix`) — ``exec_prefix = [...]``: every command behind a
  prefix such as ``kubectl exec -i -n ns pod --``, files with ``cat``/``tar`` through it.

:func:`container_access` gives a container by name (flows stop the ``stop_containers`` of a
restore with it). Every subprocess goes through the one runner,
:class:`~coderz_backup.access.commands.CommandStream`; tar streams and their member checks
are in :mod:`.archive`.

Capabilities
------------

What an access can do is a set of small interfaces (:mod:`.capabilities`), each declared by
the access class in its ``capabilities`` frozenset — never probed by type or ``getattr``:

=================  =====  ======  ================  ==============
capability         local  prefix  docker container  docker volume
=================  =====  ======  ================  ==============
Commands           yes    yes     yes               yes [1]_
Files              yes    yes     yes               yes
Archives           yes    yes     yes               yes
Lifecycle          yes    yes     yes               yes [2]_
ManagedLifecycle   –      –       yes               –
HostFiles          yes    –       –                 –
Freezable          –      –       yes               yes [3]_
DataDirOps         yes    yes     yes               yes
ReplaceCheck       –      –       yes               yes [4]_
Precheck           –      –       yes               yes
Shell              –      yes     yes               yes
ContainerControl   –      –       yes               –
=================  =====  ======  ================  ==============

.. [1] declared (every access is an :class:`Access`), but every command fails: there is no container.
.. [2] stop/start need a container: without one they return False (nothing to stop).
.. [3] nothing runs to pause: the ``with`` block just runs.
.. [4] a named volume is replaceable by definition: the check passes.

``Commands``, ``Files``, ``Archives`` and ``Lifecycle`` together are :class:`Access`, the type a
service holds. ``Lifecycle`` stops/starts through the configured ``stop_command``/``start_command``
(behind the prefix for prefix access); ``ManagedLifecycle`` means it needs none (a container).
``HostFiles``: the paths are this host's (``open()``, ``os.*``, a data dir kept aside as its sibling
``<dir>.coderz-old-<ts>``; elsewhere it is kept inside, ``<dir>/.coderz-old-<ts>``).

How a service asks for one::

    from ..access import Freezable, HostFiles, has, require

    if has(self.access, HostFiles):        # branch on an optional ability
        ...
    with require(self.access, Freezable, f"{name}: … needs docker access; nothing changed",
                 error=RestoreError).frozen():
        ...                                  # typed as Freezable, or the message is raised
"""

from __future__ import annotations

from ..errors import AccessError, ProducerError
from .archive import ARCHIVE_ERRORS, ChunkReader, SeenMembers, check_member, tar_writer
from .capabilities import (ALL_CAPABILITIES, Access, Archives, Capability, Commands, ContainerControl, DataDirOps,
                           Files, Freezable, HostFiles, Lifecycle, ManagedLifecycle, Precheck, ReplaceCheck, Shell,
                           has, require)
from .choose import access_for, container_access
from .commands import CHUNK, CommandStream
from .docker import HELPER_LABEL, DockerAccess, ExecStream, docker_client
from .local import LocalAccess
from .prefix import PrefixAccess

__all__ = [
    "ALL_CAPABILITIES", "ARCHIVE_ERRORS", "CHUNK", "HELPER_LABEL",
    "Access", "AccessError", "Archives", "Capability", "ChunkReader", "CommandStream", "Commands", "ContainerControl",
    "DataDirOps", "DockerAccess", "ExecStream", "Files", "Freezable", "HostFiles", "Lifecycle", "LocalAccess",
    "ManagedLifecycle", "Precheck", "PrefixAccess", "ProducerError", "ReplaceCheck", "SeenMembers", "Shell",
    "access_for", "check_member", "container_access", "docker_client", "has", "require", "tar_writer",
]
