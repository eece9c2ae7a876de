"""Kept for existing imports: Docker and command-prefix access now live in the
:mod:`coderz_backup.access` package (:mod:`~coderz_backup.access.docker`)."""

from __future__ import annotations

from .access.docker import HELPER_LABEL, DockerAccess, ExecStream, PrefixAccess, docker_client  # noqa: F401

__all__ = ["DockerAccess", "PrefixAccess", "docker_client"]
