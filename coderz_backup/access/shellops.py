"""File work as shell one-liners where the service runs (in its container, or behind a command
prefix): :class:`ShellFileOps`, shared by Docker and prefix access."""

from __future__ import annotations

__all__ = ["ShellFileOps"]


class ShellFileOps:
    """``remove_tree`` and the :class:`~coderz_backup.access.capabilities.DataDirOps` methods as
    shell one-liners, through the class's ``shell(script, *args, label=)``
    (:class:`~coderz_backup.access.capabilities.Shell`)."""

    def remove_tree(self, path: str) -> None:
        self.shell('rm -rf -- "$1"', path, label=f"rm -rf {path}")

    def chown_like_parent(self, path: str) -> None:
        """chown -R ``path`` to the owner of the folder itself (after an extract as root)."""
        self.shell('chown -R "$(stat -c %u:%g "$1")" "$1"', path, label=f"chown {path}")

    def move_contents(self, src: str, dest: str) -> None:
        """Move everything inside ``src`` into a new folder ``dest`` (e.g. to keep the old data)."""
        self.shell('mkdir -p "$2" && find "$1" -mindepth 1 -maxdepth 1 ! -path "$2" -exec mv -t "$2" -- {} +',
                   src, dest, label=f"move {src} aside")
