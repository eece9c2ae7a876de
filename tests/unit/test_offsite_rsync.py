"""The rsync-over-SSH target kind without a server: its command lines, its config, its listing parser."""

from __future__ import annotations

import subprocess

import pytest
from pydantic import ValidationError

from coderz_backup.errors import OffsiteError
from coderz_backup.offsite import create, setup_problems
from coderz_backup.offsite.rsync import RsyncTarget, RsyncTargetConfig, parse_listing, parse_target, ssh_command


def _cfg(tmp_path, **over):
    key = tmp_path / "key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    data = dict(kind="rsync", target="backup@nas.lan:/backups/coderz", ssh_key=str(key), known_hosts=str(kh))
    data.update(over)
    return RsyncTargetConfig(**data)


def test_ssh_is_strict_reads_no_config_and_has_no_secret_on_its_command_line(tmp_path):
    cfg = _cfg(tmp_path, port=2222, timeout_s=600)
    argv = ssh_command(cfg)
    assert argv[:3] == ["ssh", "-F", "none"]
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert "StrictHostKeyChecking=yes" in opts and "BatchMode=yes" in opts and "IdentitiesOnly=yes" in opts
    assert f"UserKnownHostsFile={cfg.known_hosts}" in opts and "GlobalKnownHostsFile=/dev/null" in opts
    assert "UpdateHostKeys=no" in opts and "ConnectTimeout=10" in opts
    assert not [o for o in opts if o.startswith("StrictHostKeyChecking=") and o != "StrictHostKeyChecking=yes"]
    assert argv[argv.index("-i") + 1] == cfg.ssh_key and argv[argv.index("-p") + 1] == "2222"
    key_text = (tmp_path / "key").read_text()
    target = create("nas", cfg)
    rsync = target._argv("--list-only", "--", target._remote("", folder=True), transfer=True)
    assert rsync[0] == "rsync" and "--timeout=600" in rsync and "--no-h" in rsync
    assert rsync[-1] == "backup@nas.lan:/backups/coderz/" and not any(key_text.strip() in a for a in rsync)
    assert not [a for a in rsync if a.startswith("--bwlimit")]
    assert rsync[rsync.index("-e") + 1].startswith("ssh -F none -i ")


def test_bwlimit_and_timeout_reach_rsync(tmp_path):
    target = create("nas", _cfg(tmp_path, bwlimit_kbps=512, timeout_s=2.5))
    moving = target._argv("-I", transfer=True)
    # the target's limit in all, shared by the parallel_files (4) transfers at a time
    assert "--bwlimit=128" in moving and "--timeout=3" in moving
    assert not [a for a in target._argv("--list-only") if a.startswith("--bwlimit")]   # a listing is not limited
    one = create("nas", _cfg(tmp_path, bwlimit_kbps=512, parallel_files=1))
    assert "--bwlimit=512" in one._argv("-I", transfer=True)
    assert "ConnectTimeout=3" in " ".join(ssh_command(target.config))


@pytest.mark.parametrize("text, expected", [
    ("backup@nas.lan:/backups/coderz", ("backup", "nas.lan", "/backups/coderz")),
    ("backup@nas.lan:/backups/coderz/", ("backup", "nas.lan", "/backups/coderz")),
    ("nas:coderz", (None, "nas", "coderz")),
    ("u@10.0.0.5:/srv/b", ("u", "10.0.0.5", "/srv/b")),
    ("u@[fd00::5]:/srv/b", ("u", "[fd00::5]", "/srv/b")),
    ("u@nas:/", ("u", "nas", "/")),
])
def test_targets_that_parse(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text, why", [
    ("nas.lan", "user@host:/path"),
    ("backup@nas.lan::module", "rsync daemon"),
    ("rsync://nas.lan/module", "rsync daemon"),
    ("-oProxyCommand=x@nas:/p", "user@host:/path"),
    ("u@-oProxyCommand=x:/p", "user@host:/path"),
    ("u@nas:", "remote path"),
    ("u@nas:/a b", "remote path"),
    ("u@nas:/a;rm -rf /", "remote path"),
    ("u@nas:/a/../etc", "may not hold .."),
    ("u@nas:-rf", "may not hold .. or start with -"),
])
def test_targets_that_are_refused_say_why(tmp_path, text, why):
    with pytest.raises(ValidationError, match=why):
        _cfg(tmp_path, target=text)


@pytest.mark.parametrize("key", ["relative/key", "/with space/key", "/a%d/key", "/a'b"])
def test_key_and_known_hosts_paths_are_plain_absolute_paths(tmp_path, key):
    with pytest.raises(ValidationError, match="absolute path without spaces"):
        _cfg(tmp_path, ssh_key=key)
    with pytest.raises(ValidationError, match="absolute path without spaces"):
        _cfg(tmp_path, known_hosts=key)


def test_the_config_table_parses_from_toml_with_its_defaults(tmp_path):
    from coderz_backup.config import load

    (tmp_path / "k").write_text("k")
    conf = tmp_path / "c.toml"
    conf.write_text(f'dest = "{tmp_path / "d"}"\n[services.c]\nkind = "configs"\npaths = ["{tmp_path}"]\n'
                    f'[offsite.nas]\nkind = "rsync"\ntarget = "backup@nas.lan:/backups/coderz"\nport = 2222\n'
                    f'ssh_key = "{tmp_path / "k"}"\nknown_hosts = "{tmp_path / "kh"}"\n')
    cfg = load(conf).offsite["nas"]
    assert (cfg.port, cfg.bwlimit_kbps, cfg.timeout_s, cfg.enabled) == (2222, None, 3600.0, True)
    assert create("nas", cfg).describe() == "backup@nas.lan:/backups/coderz over SSH port 2222"
    conf.write_text(conf.read_text() + "password = \"x\"\n")
    with pytest.raises(Exception, match="password"):
        load(conf)


def test_listing_parser_keeps_plain_names_and_drops_dot_symlinks_and_odd_entries():
    listing = "\n".join([
        "drwx------           4096 2026/12/01 03:00:00 .",
        "-rw-------        1048576 2026/12/01 03:00:00 manifest.json",
        "-rw-------          4,096 2026/12/01 03:00:00 with commas",
        "-rw-r--r--              1 2026/12/01 03:00:00 name with  two spaces ",
        "-rw-r--r--              1 2026/12/01 03:00:00 new\\#012line",
        "-rw-r--r--              1 2026/12/01 03:00:00 \\#303\\#274n\\#303\\#257",
        "-rw-r--r--              1 2026/12/01 03:00:00 back\\#134#123slash",
        "-rw-r--r--              1 2026/12/01 03:00:00 bad\\#377utf8",
        "lrwxrwxrwx             11 2026/12/01 03:00:00 link",
        "lrwxrwxrwx             11 2026/12/01 03:00:00 link2 -> /etc/passwd",
        "drwxr-xr-x           4096 2026/12/01 03:00:00 2026-12-01_03-00-00",
        "crw-r--r--              0 2026/12/01 03:00:00 device",
        "-rw-r--r--              1 2026/12/01 03:00:00 a/b",
        "-rw-r--r--              1 2026/12/01 03:00:00 ..",
        "-rw-r--r--              1 2026/12/01 03:00:00 nul\\#000",
        "garbage line from a hostile server",
        "",
    ])
    got = {e.name: (e.type, e.size) for e in parse_listing(listing)}
    assert got == {"manifest.json": ("-", 1048576), "with commas": ("-", 4096),
                   "name with  two spaces ": ("-", 1), "new\nline": ("-", 1), "ünï": ("-", 1),
                   "back\\#123slash": ("-", 1), "2026-12-01_03-00-00": ("d", 4096)}


def test_remote_paths_are_checked_and_rels_never_leave_the_folder(tmp_path):
    target = create("nas", _cfg(tmp_path))
    assert target._remote("2026-12-01_03-00-00/db.sql.gz") == \
        "backup@nas.lan:/backups/coderz/2026-12-01_03-00-00/db.sql.gz"
    assert target._remote("2026-12-01_03-00-00", folder=True).endswith("/2026-12-01_03-00-00/")
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b"):
        with pytest.raises(Exception, match="outside the snapshot folder"):
            target._remote(bad)
    with pytest.raises(OffsiteError, match="control character"):
        target._remote("a\nb")


def _failed(stderr: str, code: int = 255):
    return subprocess.CompletedProcess(["rsync"], code, "", stderr)


@pytest.mark.parametrize("stderr, code, says", [
    ("No ED25519 host key is known for [nas.lan]:22 and you have requested strict checking.\n"
     "Host key verification failed.\n", 255, "host key verification failed: the host key of nas.lan port 22 is not in"),
    ("@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\nHost key verification failed.\n", 12, "it changed"),
    ("backup@nas.lan: Permission denied (publickey).\n", 255, "refused the key"),
    ("ssh: connect to host nas.lan port 22: Connection refused\n", 12, "connection refused"),
    ("ssh: connect to host nas.lan port 22: Connection timed out\n", 255, "did not answer in time"),
    ("ssh: Could not resolve hostname nas.lan: Name or service not known\n", 255, "cannot reach nas.lan"),
    ('rsync: [receiver] write failed on "/b/f": No space left on device (28)\n', 11, "the remote disk is full"),
    ("rsync: [Receiver] Failed to exec ssh: No such file or directory (2)\n", 14, "apt-get install openssh-client"),
    ("bash: line 1: rsync: command not found\n", 127, "rsync is not installed on nas.lan"),
    ('rsync: [receiver] mkdir "/b/x" failed: Permission denied (13)\n', 23, "may not write there"),
    ("x" * 5000, 5, "(rsync exit 5)"),
])
def test_failures_become_messages_that_say_what_to_do(tmp_path, stderr, code, says):
    target = create("nas", _cfg(tmp_path))
    err = target._error(_failed(stderr, code), "sending x")
    assert says in str(err) and str(err).startswith("off-site nas: sending x on backup@nas.lan:/backups/coderz")
    assert len(str(err)) < 800        # short excerpts only


def test_host_key_advice_names_ssh_keyscan_and_the_fingerprint(tmp_path):
    err = create("nas", _cfg(tmp_path, port=2222))._error(_failed("Host key verification failed.\n"), "listing")
    assert "ssh-keyscan -p 2222 -t ed25519 nas.lan" in str(err) and "fingerprint" in str(err)
    assert "never accepted automatically" in str(err)


def test_a_missing_rsync_binary_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    target = create("nas", _cfg(tmp_path))
    with pytest.raises(OffsiteError, match="rsync is not installed on this host"):
        target.names()
    problems = RsyncTarget.setup_problems("nas", target.config)
    assert "offsite.nas: rsync is not installed on this host (apt-get install rsync)" in problems
    assert "offsite.nas: ssh is not installed on this host (apt-get install openssh-client)" in problems


def test_setup_problems_name_missing_key_and_known_hosts_files(tmp_path):
    class Cfg:
        offsite = {"nas": _cfg(tmp_path, ssh_key=str(tmp_path / "nokey"), known_hosts=str(tmp_path / "nokh")),
                   "off": _cfg(tmp_path, enabled=False, ssh_key=str(tmp_path / "nokey"))}

    problems = [p for p in setup_problems(Cfg) if "is not installed" not in p]
    assert len(problems) == 2 and all(p.startswith("offsite.nas: ") for p in problems)
    assert "ssh_key" in problems[0] and "does not exist" in problems[0]
    assert "known_hosts" in problems[1] and "ssh-keyscan" in problems[1]
    with pytest.raises(OffsiteError, match="ssh_key .* does not exist"):
        create("nas", Cfg.offsite["nas"]).names()
