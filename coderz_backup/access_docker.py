"""Kept for existing imports: Docker and command-prefix access now live in the
:mod:`coderz_backup.access` package (:mod:`~coderz_backup.access.docker`,
:mod:`~coderz_backup.access.prefix`)."""

from __future__ import annotations

from .access.docker import HELPER_LABEL, DockerAccess, ExecStream, docker_client  # noqa: F401
from .access.prefix import _ENV_LOADER, PrefixAccess  # noqa: F401
from .access.shellops import ShellFileOps as _ShellFileOps  # noqa: F401

__all__ = ["DockerAccess", "PrefixAccess", "docker_client"]
