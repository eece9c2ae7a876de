"""``kind = "rsync"``: a folder on another host, reached with rsync over SSH (a NAS, a second server).

Only rsync's own protocol runs on the remote side — no remote shell commands — so an account
restricted to one folder with ``rrsync`` works. rsync and ssh run as subprocesses with argument
lists (never a shell); ssh gets ``-F none`` (no user or system ssh config), the configured key
only (``IdentitiesOnly``, ``BatchMode``: never a prompt) and the configured ``known_hosts`` file
only, with ``StrictHostKeyChecking=yes``: a host key is **never** accepted on first sight, an
unknown or changed one fails the copy. No secret is ever on a command line (the key is a file).

**How arrival is checked** (:meth:`RsyncTarget.put`): the local file is first hashed and must
match the manifest's size and sha256 (what is compared afterwards is the remote file against
this local file). rsync writes it under a temporary name beside the final one and renames it
when the transfer is complete, so a copy cut short never leaves a file that looks whole; the
missing parent folders travel in the same transfer (0700; files 0600). Then a second rsync of
the same file, ``--dry-run --checksum -ii`` (itemize every file, changed or not), must report
it as a regular file that needs nothing (``.f``): the same size, and the same whole-file
checksum computed by rsync on each side (MD5 or XXH128, as negotiated). A check that fails
deletes the remote file: ``OffsiteError … not kept``. The signed manifest's sha256 of each file is
checked again by :func:`~coderz_backup.offsite.copy.fetch` when a copy comes back.

Reading (:meth:`RsyncTarget.open`) downloads the remote file into a private temp folder (0700,
``$TMPDIR``) and yields it opened; listing parses ``rsync --list-only`` (untrusted: only plain
names of files and folders, no symlinks); deleting sends an empty folder with ``--delete``
limited to the one name by filter rules. The remote folder ``target`` must exist.

The calls of one target share one SSH connection (``ControlMaster``, its socket in a private
temp folder; it ends with the target object or :data:`CONTROL_PERSIST_S` seconds after the
last call): one key exchange per run, not one per file.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path, PurePosixPath
from typing import BinaryIO, ClassVar, Iterator, Literal

from pydantic import Field, field_validator

from ..errors import OffsiteError
from ..reader import safe_relpath
from .base import TargetBase, file_digest

__all__ = ["RemoteEntry", "RsyncTarget", "RsyncTargetConfig", "parse_listing", "parse_target", "ssh_command"]

#: ``[user@]host:path`` — host a name, an IPv4 address or an IPv6 address in brackets
_TARGET = re.compile(r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]*)@)?"
                     r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                     r":(?P<path>.*)$")
#: characters a remote path may hold (rsync escapes arguments for the remote shell since 3.2.4,
#: older ones split on spaces: none allowed)
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._+,=@~/-]+$")
#: a key or known_hosts path: no spaces, quotes, backslashes or ``%`` (ssh expands %-tokens)
_LOCAL_PATH = re.compile(r"^/[^\s'\"\\%]+$")
#: one ``rsync --list-only --no-h`` line: type+permissions, size, date, time, name
_LISTING = re.compile(r"^(?P<type>[-dlpcbsD])[-rwxsStTl+.]{9}[+.@]?\s+(?P<size>[0-9,]+)\s+"
                      r"\d{4}/\d{2}/\d{2}\s+\d{2}:\d{2}:\d{2}\s(?P<name>.+)$")
_ESCAPE = re.compile(r"\\#([0-7]{3})")
#: rsync's "a file or folder is not there" (a listing, a download, a dry run)
_MISSING = re.compile(r'(?:change_dir|link_stat)(?:#\d+)? ".*" failed: (?:No such file or directory \(2\)|'
                      r'Not a directory \(20\))')


#: how long the shared SSH connection of a target outlives its last call (seconds)
CONTROL_PERSIST_S = 30


class RsyncTargetConfig(TargetBase):
    """A folder on another host, reached with rsync over SSH, that receives a copy of every snapshot."""

    kind: Literal["rsync"] = Field(..., description="\"rsync\": rsync over SSH (the host key is checked, "
                                                    "never accepted on first sight)")
    target: str = Field(..., description="user@host:/path of the existing remote folder (a snapshot lands in "
                                         "<path>/<snapshot>/; a relative path is relative to the login's home "
                                         "or to the rrsync folder)")
    port: int = Field(22, ge=1, le=65535, description="the SSH port")
    ssh_key: str = Field(..., description="private key file (no passphrase, 0600) the remote account accepts; "
                                          "restrict it there with rrsync")
    known_hosts: str = Field(..., description="known_hosts file holding the remote host's key (ssh-keyscan it "
                                              "and compare its fingerprint); the only host keys trusted")

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        parse_target(v)
        return v

    @field_validator("ssh_key", "known_hosts")
    @classmethod
    def _local_path(cls, v: str) -> str:
        if not _LOCAL_PATH.match(v):
            raise ValueError("an absolute path without spaces, quotes, backslashes or % (ssh reads it as given)")
        return v


def parse_target(target: str) -> tuple[str | None, str, str]:
    """``[user@]host:path`` as (user, host, path without a trailing slash); ValueError saying what is wrong."""
    daemon = ValueError("rsync over SSH is user@host:/path (an rsync daemon, host::module or rsync://, "
                        "is not supported)")
    if target.startswith("rsync://"):
        raise daemon
    m = _TARGET.match(target)
    if m and m["path"].startswith(":"):
        raise daemon
    if not m:
        raise ValueError("write it as user@host:/path (host a name or an address, [v6] in brackets; the port "
                         "goes in port = N)")
    path = m["path"]
    if not path or not _PATH_CHARS.match(path):
        raise ValueError("the remote path after host: is a folder like /backups/coderz (letters, digits and "
                         "._+,=@~/- only)")
    parts = path.split("/")
    if ".." in parts or path.startswith("-"):
        raise ValueError("the remote path may not hold .. or start with -")
    stripped = path.rstrip("/") or "/"
    return m["user"], m["host"], stripped


def ssh_command(config: RsyncTargetConfig, control: str | None = None) -> list[str]:
    """The ssh command rsync runs (``-e``): no config files, one key, one known_hosts, strict; with
    ``control`` (a socket path in a private folder) the calls of one target share one connection."""
    argv = ["ssh", "-F", "none", "-i", config.ssh_key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={config.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no",
            "-o", f"ConnectTimeout={_connect_timeout(config)}", "-p", str(config.port)]
    if control:
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}",
                 "-o", f"ControlPersist={CONTROL_PERSIST_S}"]
    return argv


def _connect_timeout(config: RsyncTargetConfig) -> int:
    return max(1, math.ceil(min(config.timeout_s, 10.0)))


class RemoteEntry(tuple):
    """One entry of a remote listing: (type, size, name); type is "-" (file) or "d" (folder)."""

    __slots__ = ()

    def __new__(cls, type_: str, size: int, name: str):
        return super().__new__(cls, (type_, size, name))

    type = property(lambda self: self[0])
    size = property(lambda self: self[1])
    name = property(lambda self: self[2])


def parse_listing(text: str) -> list[RemoteEntry]:
    """The files and folders of ``rsync --list-only --no-h`` output (remote, untrusted): ``.``, symlinks,
    devices and anything that is not a plain name (a ``/``, ``..``, a NUL, undecodable) are left out."""
    out = []
    for line in text.split("\n"):
        m = _LISTING.match(line.rstrip("\r"))
        if not m or m["type"] not in "-d":
            continue
        raw = _ESCAPE.sub(lambda e: chr(int(e[1], 8)), m["name"])   # rsync's \#ooo: one byte each
        try:
            name = raw.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if name in (".", "..") or not name or "/" in name or "\0" in name:
            continue
        out.append(RemoteEntry(m["type"], int(m["size"].replace(",", "")), name))
    return out


def _filter_escape(name: str) -> str:
    """``name`` for an rsync filter rule that holds wildcards (``*?[`` and ``\\`` escaped)."""
    return re.sub(r"([*?\[\\])", r"\\\1", name)


def _excerpt(stderr: str, limit: int = 200) -> str:
    """The telling line of rsync's/ssh's stderr, short (rsync's own summary lines left out)."""
    lines = [ln.strip() for ln in stderr.replace("\r", "\n").split("\n") if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("rsync error:", "rsync: connection unexpectedly closed",
                                                      "rsync: [Receiver] write error: Broken pipe",
                                                      "rsync: [sender] write error: Broken pipe"))]
    text = (useful or lines or ["(no message)"])[0]
    return text if len(text) <= limit else text[:limit - 1] + "…"


class RsyncTarget:
    kind: ClassVar[str] = "rsync"
    config_model: ClassVar[type[RsyncTargetConfig]] = RsyncTargetConfig

    def __init__(self, name: str, config: RsyncTargetConfig):
        self.name = name
        self.config = config
        self.user, self.host, self.path = parse_target(config.target)
        self._root_checked = False
        self._control: str | None = None
        self._lock = threading.Lock()

    def _control_path(self) -> str | None:
        """The socket of this target's shared SSH connection, in a private temp folder (None: not shared)."""
        with self._lock:
            if self._control is None:
                folder = tempfile.mkdtemp(prefix="coderz-ssh-")
                path = f"{folder}/cm"
                if not _LOCAL_PATH.match(path) or len(path) > 90:   # a socket path is short, ssh reads it as given
                    shutil.rmtree(folder, ignore_errors=True)
                    self._control = ""
                else:
                    self._control = path
                    weakref.finalize(self, _close_master, path, ssh_command(self.config, path))
            return self._control or None

    def describe(self) -> str:
        port = f" port {self.config.port}" if self.config.port != 22 else ""
        return f"{self.config.target.rstrip('/') or self.config.target} over SSH{port}"

    @classmethod
    def setup_problems(cls, name: str, config: RsyncTargetConfig) -> list[str]:
        """What keeps this target from working on this host (``config check``)."""
        out = []
        for binary, package in (("rsync", "rsync"), ("ssh", "openssh-client")):
            if shutil.which(binary) is None:
                out.append(f"offsite.{name}: {binary} is not installed on this host (apt-get install {package})")
        for problem in (_key_problem(config.ssh_key), _known_hosts_problem(config.known_hosts)):
            if problem:
                out.append(f"offsite.{name}: {problem}")
        return out

    # -- plumbing ------------------------------------------------------------------

    def _remote(self, rel: str = "", *, folder: bool = False) -> str:
        """``[user@]host:<path>/<rel>`` (``folder``: with a trailing slash, its content)."""
        rel = safe_relpath(rel) if rel else ""
        if any(ord(c) < 32 or ord(c) == 127 for c in rel):
            raise OffsiteError(f"off-site {self.name}: {rel!r} holds a control character, which rsync over SSH "
                               "cannot pass to the remote side; rename it")
        path = self.path if not rel else f"{self.path.rstrip('/')}/{rel}"
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}:{path}{'/' if folder and not path.endswith('/') else ''}"

    def _check_files(self) -> None:
        for problem in (_key_problem(self.config.ssh_key), _known_hosts_problem(self.config.known_hosts)):
            if problem:
                raise OffsiteError(f"off-site {self.name}: {problem}")

    def _argv(self, *args: str, transfer: bool = False) -> list[str]:
        cfg = self.config
        argv = ["rsync", "-e", " ".join(ssh_command(cfg, self._control_path())),
                f"--timeout={max(1, math.ceil(cfg.timeout_s))}", "--no-h"]
        if transfer and cfg.bwlimit_kbps:
            # the limit is the target's in all: shared by the files sent at the same time
            argv.append(f"--bwlimit={max(1, cfg.bwlimit_kbps // cfg.parallel_files)}")
        return argv + list(args)

    def _run(self, argv: list[str], doing: str) -> subprocess.CompletedProcess:
        """Run rsync; OffsiteError (mapped) unless it exits 0 or with "not there" (23, see :data:`_MISSING`)."""
        self._check_files()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSYNC_") and k != "SSH_AUTH_SOCK"}
        env["LC_ALL"] = "C"   # messages in English (they are mapped), names escaped as \#ooo
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=env, start_new_session=True)
        except FileNotFoundError:
            raise OffsiteError(f"off-site {self.name}: rsync is not installed on this host — apt-get install "
                               "rsync openssh-client") from None
        try:
            out, err = proc.communicate(timeout=self.config.timeout_s + 5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise OffsiteError(f"off-site {self.name}: {doing} on {self.describe()} took longer than timeout_s "
                               f"({self.config.timeout_s:g} s); stopped — raise timeout_s or bwlimit_kbps") from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        result = subprocess.CompletedProcess(argv, proc.returncode, out.decode("utf-8", "replace"),
                                             err.decode("utf-8", "replace"))
        if result.returncode != 0 and not self._missing(result):
            raise self._error(result, doing)
        return result

    @staticmethod
    def _missing(result: subprocess.CompletedProcess) -> bool:
        return result.returncode == 23 and bool(_MISSING.search(result.stderr))

    def _error(self, result: subprocess.CompletedProcess, doing: str) -> OffsiteError:
        code = result.returncode
        # a shared connection that went away is only noise (ssh then connects on its own)
        err = "\n".join(ln for ln in result.stderr.splitlines()
                        if not ln.startswith(("Control socket connect", "mux_client", "ControlSocket")))
        where = f"{self.host} port {self.config.port}"
        head = f"off-site {self.name}: {doing} on {self.describe()} failed"
        if "Host key verification failed" in err:
            changed = "HAS CHANGED" in err or "has changed" in err
            what = ("the host key of {w} is not the one in {kh} (it changed — a reinstalled host or a "
                    "man-in-the-middle)" if changed else "the host key of {w} is not in {kh}")
            what = what.format(w=where, kh=self.config.known_hosts)
            scan = f"ssh-keyscan -p {self.config.port} -t ed25519 {self.host.strip('[]')}"
            return OffsiteError(f"{head}: host key verification failed: {what} — get it with `{scan}`, "
                                "compare its fingerprint (ssh-keygen -lf) with the one the host itself shows "
                                "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub there), then add the line to "
                                "known_hosts; it is never accepted automatically")
        if "Permission denied (publickey" in err or "Too many authentication failures" in err:
            return OffsiteError(f"{head}: {where} refused the key {self.config.ssh_key} for user "
                                f"{self.user or '(this user)'} — add its .pub to that account's authorized_keys "
                                "(restricted with rrsync), or fix ssh_key/target")
        if "UNPROTECTED PRIVATE KEY FILE" in err or re.search(r"Load key .*: (invalid format|error in libcrypto)", err):
            return OffsiteError(f"{head}: ssh cannot use the key {self.config.ssh_key} ({_excerpt(err, 120)}) — it "
                                "must be a private key without a passphrase, chmod 600, owned by this user")
        if "Failed to exec ssh" in err:
            return OffsiteError(f"{head}: ssh is not installed on this host — apt-get install openssh-client")
        if "Connection refused" in err:
            return OffsiteError(f"{head}: nothing answers on {where} (connection refused) — is sshd up on the "
                                "remote host, is the port right?")
        if re.search(r"Connection timed out|Operation timed out|timed out during banner", err) or code in (30, 35):
            return OffsiteError(f"{head}: {where} did not answer in time ({_connect_timeout(self.config)} s to "
                                f"connect, --timeout {max(1, math.ceil(self.config.timeout_s))} s idle) — is the "
                                "host up and reachable, does a firewall drop the port?")
        if re.search(r"Could not resolve hostname|Name or service not known|No route to host|Network is unreachable",
                     err):
            return OffsiteError(f"{head}: cannot reach {where} ({_excerpt(err, 120)}) — check the host name in "
                                "target and the network")
        if "No space left on device" in err or "Disk quota exceeded" in err:
            return OffsiteError(f"{head}: the remote disk is full (no space left on device) — free space under "
                                f"{self.path} on {self.host} or remove old copies there")
        if re.search(r"rsync: (command )?not found|rsync: not found|exec request failed", err) or code == 127:
            return OffsiteError(f"{head}: rsync is not installed on {self.host} (or the account may not run it) — "
                                "install rsync there")
        if "protocol version mismatch" in err or "is your shell clean" in err:
            return OffsiteError(f"{head}: the remote account prints text before rsync starts (protocol mismatch) — "
                                "its shell startup files must be silent, or use an rrsync-restricted key")
        if "Permission denied (13)" in err or "Read-only file system" in err:
            return OffsiteError(f"{head}: the remote account may not write there ({_excerpt(err, 120)}) — check the "
                                f"owner and mode of {self.path} on {self.host} (rrsync: not -ro/-wo, not -no-del)")
        return OffsiteError(f"{head} (rsync exit {code}): {_excerpt(err)}")

    def _list(self, rel: str, *, folder: bool) -> tuple[list[RemoteEntry], bool]:
        """The listing of ``rel`` (``folder``: its content), and whether it exists at all."""
        res = self._run(self._argv("--list-only", "--", self._remote(rel, folder=folder)),
                        f"listing {rel or 'the remote folder'}")
        if self._missing(res):
            return [], False
        return parse_listing(res.stdout), True

    def _ensure_root(self) -> None:
        if self._root_checked:
            return
        _, there = self._list("", folder=True)
        if not there:
            raise OffsiteError(f"off-site {self.name}: the remote folder {self.path} does not exist on {self.host} — "
                               "create it there (mkdir -m 700) or fix target")
        self._root_checked = True

    def _delete(self, rel: str) -> None:
        """Delete file or folder ``rel`` with rsync only: an empty folder sent with --delete, filtered to it."""
        parent, _, name = safe_relpath(rel).rpartition("/")
        pattern = "/" + _filter_escape(name)   # wildcards in a rule with one are escaped, else literal
        with tempfile.TemporaryDirectory(prefix="coderz-rsync-empty-") as empty:
            self._run(self._argv("-r", "--delete", f"--include={pattern}", f"--include={pattern}/***",
                                 "--exclude=*", "--", f"{empty}/", self._remote(parent, folder=True)),
                      f"deleting {rel}")

    # -- the Target protocol ---------------------------------------------------------

    def put(self, rel: str, source: Path, *, size: int, sha256: str) -> None:
        rel = safe_relpath(rel)
        try:
            got = file_digest(source)
        except OSError as exc:
            raise OffsiteError(f"off-site {self.name}: reading {source} to send it as {rel} failed: "
                               f"{exc.strerror or exc}") from None
        if got != (size, sha256):
            raise OffsiteError(f"off-site {self.name}: {rel} here is {got[0]} bytes with another sha256 than the "
                               f"manifest's {size} bytes (the local file changed); not sent, not kept")
        self._ensure_root()
        with tempfile.TemporaryDirectory(prefix="coderz-rsync-put-") as stage:
            # the file at its place in a tree of its folders: one transfer makes the missing ones (0700)
            link = Path(stage, *PurePosixPath(rel).parts)
            link.parent.mkdir(parents=True, mode=0o700)
            link.symlink_to(Path(source).resolve())
            tree = ["-r", "--copy-links", "--chmod=D700,F600", "--", f"{stage}/", self._remote("", folder=True)]
            # -I: always sent (never skipped on size and time), -W: the whole file; rsync writes a temp
            # name beside the final one and renames it when the file is complete
            self._run(self._argv("-I", "-W", *tree, transfer=True), f"sending {rel}")
            try:
                # -ii: the file's line comes even when nothing differs ("." first: same size, same checksum)
                check = self._run(self._argv("--dry-run", "--checksum", "-ii", *tree),
                                  f"checking {rel} after sending it")
                lines = [ln for ln in check.stdout.splitlines() if ln.strip()]
                mine = [ln for ln in lines if ln[12:] == rel]
                if self._missing(check) or not mine:
                    problem = "is not there after sending it"
                elif not mine[0].startswith(".f"):
                    problem = ("differs from the file sent (size or rsync's whole-file checksum: "
                               f"{mine[0][:11].strip()})")
                else:
                    problem = None
            except BaseException:
                with contextlib.suppress(OffsiteError):
                    self._delete(rel)
                raise
        if problem:
            with contextlib.suppress(OffsiteError):
                self._delete(rel)
            raise OffsiteError(f"off-site {self.name}: {rel} {problem}; not kept")

    @contextlib.contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        rel = safe_relpath(rel)
        tmp = tempfile.mkdtemp(prefix="coderz-rsync-get-")   # 0700: only this user sees what comes back
        try:
            local = Path(tmp) / "data"
            # no -r, no -l: a folder or a symlink on the remote is skipped (and so "not there")
            res = self._run(self._argv("-I", "--chmod=F600", "--", self._remote(rel), str(local), transfer=True),
                            f"reading {rel}")
            if self._missing(res) or not local.is_file() or local.is_symlink():
                raise OffsiteError(f"off-site {self.name}: {rel} is not there on {self.describe()} (or not a "
                                   "regular file)")
            fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as fh:
                yield fh
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def names(self, rel: str = "") -> list[str]:
        entries, there = self._list(rel, folder=True)
        if not there and not rel:
            raise OffsiteError(f"off-site {self.name}: the remote folder {self.path} does not exist on {self.host} — "
                               "create it there (mkdir -m 700) or fix target")
        return sorted(e.name for e in entries)

    def exists(self, rel: str) -> bool:
        entries, _ = self._list(rel, folder=False)
        base = PurePosixPath(safe_relpath(rel)).name
        return any(e.name == base and e.type == "-" for e in entries)

    def remove(self, rel: str) -> None:
        rel = safe_relpath(rel)
        parent, _, name = rel.rpartition("/")
        if name not in self.names(parent):   # missing is fine (and never makes a folder on the way)
            return
        self._delete(rel)


def _close_master(control: str, ssh: list[str]) -> None:
    """End a target's shared SSH connection (when the target object goes) and remove its folder."""
    if os.path.exists(control):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*ssh, "-O", "exit", "coderz-backup"], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=10, env={**os.environ, "LC_ALL": "C"})
    shutil.rmtree(os.path.dirname(control), ignore_errors=True)


def _key_problem(path: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (f"ssh_key {path} does not exist — create a key pair (ssh-keygen -t ed25519 -N '' -f {path}) "
                "or fix ssh_key")
    except OSError as exc:
        return f"ssh_key {path} cannot be read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"ssh_key {path} is not a file"
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        return (f"ssh_key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}; ssh refuses it) — "
                "chmod 600 it")
    if not os.access(path, os.R_OK):
        return f"ssh_key {path} cannot be read by this user"
    return None


def _known_hosts_problem(path: str) -> str | None:
    if not os.path.isfile(path):
        return (f"known_hosts {path} does not exist — create it with the remote host's key (ssh-keyscan, then "
                "compare the fingerprint) or fix known_hosts")
    if not os.access(path, os.R_OK):
        return f"known_hosts {path} cannot be read by this user"
    return None
