"""Local access: commands run on this host, files are this host's files."""

from __future__ import annotations

import contextlib
import os
import shutil
from ..tarfile_compat import tarfile
from typing import BinaryIO, Iterable, Iterator, Sequence

from ..errors import AccessError
from .archive import ARCHIVE_ERRORS, ChunkReader, SeenMembers, check_member, tar_writer
from .capabilities import Archives, Commands, DataDirOps, Files, HostFiles, Lifecycle
from .commands import CommandStream, feed_command, lifecycle_command, read_all

__all__ = ["LocalAccess"]


class LocalAccess:
    """Commands run on this host; files are this host's files."""

    description = "local"
    capabilities: frozenset[type] = frozenset({Commands, Files, Archives, Lifecycle, HostFiles, DataDirOps})
    #: stop_service/start_service work without configured commands (a container): never here

    def stream(self, argv, *, env=None, timeout=None, label=None) -> CommandStream:
        return CommandStream(argv, env=env, timeout=timeout, label=label)

    def feed(self, argv, chunks, *, env=None, timeout=None, label=None) -> str:
        return feed_command(argv, chunks, env=env, timeout=timeout, label=label)

    def run(self, argv, *, env=None, timeout=None, label=None) -> str:
        return read_all(self.stream(argv, env=env, timeout=timeout, label=label))

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[BinaryIO]:
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise AccessError(f"{path}: no such file") from None
        except PermissionError:
            raise AccessError(f"{path}: permission denied") from None
        with fh:
            yield fh

    def readable(self, path: str) -> bool:
        if os.path.isdir(path):
            return os.access(path, os.R_OK | os.X_OK)
        return os.path.isfile(path) and os.access(path, os.R_OK)

    def tar_dir(self, path: str, out: BinaryIO, *, exclude: Sequence[str] = ()) -> int:
        if not os.path.isdir(path):
            raise AccessError(f"{path}: no such folder")
        count = 0
        try:
            with tar_writer(out) as tar:
                for name in sorted(os.listdir(path)):
                    if name in exclude:
                        continue

                    def _count(info: tarfile.TarInfo) -> tarfile.TarInfo:
                        nonlocal count
                        count += 1
                        return info

                    tar.add(os.path.join(path, name), arcname=name, recursive=True, filter=_count)
        except OSError as exc:
            raise AccessError(f"cannot read {exc.filename or path}: {exc.strerror}") from None
        return count

    def untar_into(self, path: str, chunks: Iterable[bytes]) -> int:
        if not os.path.isdir(path):
            raise AccessError(f"{path}: no such folder to restore into")
        root = os.path.realpath(path)
        count = 0
        links = SeenMembers()

        def _safe(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
            nonlocal count
            check_member(member, dest, links)
            count += 1
            return member

        try:
            with tarfile.open(fileobj=ChunkReader(chunks), mode="r|") as tar:
                tar.extractall(root, numeric_owner=True, filter=_safe)
        except tarfile.FilterError as exc:
            raise AccessError(f"refusing unsafe archive member: {exc}") from None
        except ARCHIVE_ERRORS as exc:
            raise AccessError(f"extracting into {path} failed: {exc}") from None
        return count

    def remove_tree(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def chown_like_parent(self, path: str) -> None:
        """chown -R ``path`` to the owner of the folder itself (after an extract as root)."""
        st = os.stat(path)
        for base, dirs, files in os.walk(path):
            for n in dirs + files:
                os.lchown(os.path.join(base, n), st.st_uid, st.st_gid)

    def move_contents(self, src: str, dest: str) -> None:
        """Move everything inside ``src`` into a new folder ``dest`` (e.g. to keep the old data)."""
        os.makedirs(dest, exist_ok=True)
        for n in os.listdir(src):
            full = os.path.join(src, n)
            if os.path.abspath(full) != os.path.abspath(dest):
                os.rename(full, os.path.join(dest, n))

    def stop_service(self, command, *, timeout: float = 120) -> bool:
        return lifecycle_command(self.run, command, timeout=timeout, label="stop_command")

    def start_service(self, command, *, timeout: float = 120) -> bool:
        return lifecycle_command(self.run, command, timeout=timeout, label="start_command")
