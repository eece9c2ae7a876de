"""Command-prefix access: every command runs behind a fixed prefix such as
``kubectl exec -i -n apisix apisix-etcd-0 --`` (the product document's "etcdctl snapshot from
pod"), on this host's :class:`~coderz_backup.access.commands.CommandStream`.

The prefix tool does not forward environment variables, so secrets travel on the command's
stdin to a tiny ``sh`` loader that exports them and ``exec``\\ s the command — they never
appear in an argv on either side. Files are read with ``cat``/``tar`` and changed with shell
one-liners through the same prefix: nothing of the service is touched on this host.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
from ..tarfile_compat import tarfile
import threading
from typing import BinaryIO, Iterable, Iterator, Mapping, Sequence

from ..errors import AccessError, ProducerError
from .archive import ChunkReader, copy_checked, tar_writer
from .capabilities import Archives, Commands, DataDirOps, Files, Lifecycle, Shell
from .commands import CHUNK, CommandStream, feed_command, lifecycle_command, read_all
from .shellops import ShellFileOps

__all__ = ["PrefixAccess"]

_ENV_LOADER = 'while IFS= read -r line && [ -n "$line" ]; do export "$line"; done; exec "$@"'


class PrefixAccess(ShellFileOps):
    """Every command runs as ``prefix + argv`` (e.g. ``kubectl exec -i -n ns pod --``).

    Environment variables for the command (secrets) are written to its stdin as
    ``NAME=value`` lines, ended by an empty line, and exported by a ``sh`` loader on
    the far side; argv never holds them. Files are read with ``cat``/``tar`` through
    the same prefix. ``stop_command``/``start_command`` run behind the prefix too.
    """

    capabilities: frozenset[type] = frozenset({Commands, Files, Archives, Lifecycle, DataDirOps, Shell})
    #: stop_service/start_service need configured commands (run behind the prefix)

    def __init__(self, prefix: Sequence[str]):
        if not prefix:
            raise AccessError("exec_prefix is empty")
        self.prefix = list(prefix)
        self.description = f"via {shlex.join(self.prefix)}"

    def _wrap(self, argv: Sequence[str], env: Mapping[str, str] | None) -> tuple[list[str], bytes | None]:
        if not env:
            return [*self.prefix, *argv], None
        lines = []
        for k, v in env.items():
            if "\n" in v or "\n" in k or not k:
                raise AccessError(f"{k}: a value with a newline cannot be passed through exec_prefix")
            lines.append(f"{k}={v}\n")
        return [*self.prefix, "sh", "-c", _ENV_LOADER, "sh", *argv], ("".join(lines) + "\n").encode()

    def stream(self, argv, *, env=None, timeout=None, label=None) -> CommandStream:
        full, preamble = self._wrap(argv, env)
        label = label or os.path.basename(argv[0])
        if preamble is None:
            return CommandStream(full, timeout=timeout, label=label)
        cmd = CommandStream(full, timeout=timeout, label=label, stdin=subprocess.PIPE)
        assert cmd.proc.stdin is not None
        try:
            cmd.proc.stdin.write(preamble)
            cmd.proc.stdin.close()
        except BrokenPipeError:
            pass
        return cmd

    def feed(self, argv, chunks, *, env=None, timeout=None, label=None) -> str:
        full, preamble = self._wrap(argv, env)

        def _all() -> Iterator[bytes]:
            if preamble:
                yield preamble
            yield from chunks

        return feed_command(full, _all(), timeout=timeout, label=label or os.path.basename(argv[0]))

    def run(self, argv, *, env=None, timeout=None, label=None) -> str:
        return read_all(self.stream(argv, env=env, timeout=timeout, label=label))

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[BinaryIO]:
        with self.stream(["cat", "--", path], label=f"cat {path}") as cmd:
            finished = False

            def _checked() -> Iterator[bytes]:
                # the exit status is checked *before* the reader sees EOF: a caller that commits
                # at EOF (the artifact writer) never renames the output of a failed `cat`
                nonlocal finished
                yield from cmd.chunks()
                finished = True
                cmd.finish()

            yield io.BufferedReader(ChunkReader(_checked()), CHUNK)
            if not finished:
                cmd.finish()

    def readable(self, path: str) -> bool:
        try:
            self.run(["test", "-r", path], timeout=60, label="test -r")
        except (ProducerError, AccessError):
            return False
        return True

    def shell(self, script: str, *args: str, timeout: float = 600, label: str = "sh") -> None:
        """Run a ``sh -c`` script on the far side (file work never happens on this host)."""
        self.run(["sh", "-c", script, "sh", *args], timeout=timeout, label=label)

    def tar_dir(self, path: str, out: BinaryIO, *, exclude: Sequence[str] = ()) -> int:
        argv = ["tar", "-C", path, "-cf", "-", *[f"--exclude=./{e}" for e in exclude], "."]
        count = 0
        with self.stream(argv, label=f"tar {path}") as cmd, \
                tarfile.open(fileobj=ChunkReader(cmd.chunks()), mode="r|") as src, \
                tar_writer(out) as dst:
            for member in src:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if not name or name == ".":
                    continue
                member.name = name
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
                count += 1
            cmd.finish()
        return count

    def untar_into(self, path: str, chunks: Iterable[bytes]) -> int:
        checked: list[int] = [0]

        def _checked() -> Iterator[bytes]:
            r, w = os.pipe()
            errs: list[BaseException] = []

            def _pump() -> None:
                try:
                    with os.fdopen(w, "wb", buffering=CHUNK) as wf:
                        checked[0] = copy_checked(chunks, wf)
                except BaseException as exc:  # noqa: BLE001
                    errs.append(exc)

            t = threading.Thread(target=_pump, daemon=True)
            t.start()
            with os.fdopen(r, "rb", buffering=0) as rf:
                yield from iter(lambda: rf.read(CHUNK), b"")
            t.join()
            if errs:
                raise AccessError(f"refusing archive for {path}: {errs[0]}")

        self.feed(["tar", "-C", path, "--numeric-owner", "-xf", "-"], _checked(), label=f"tar -x {path}")
        return checked[0]

    def stop_service(self, command, *, timeout: float = 120) -> bool:
        return lifecycle_command(self.run, command, timeout=timeout, label="stop_command")

    def start_service(self, command, *, timeout: float = 120) -> bool:
        return lifecycle_command(self.run, command, timeout=timeout, label="start_command")
