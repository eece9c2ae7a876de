"""A configs archive's symlinks are judged where they really lead, through the archive's own links."""

from __future__ import annotations

from coderz_backup.tarfile_compat import tarfile

import pytest

from coderz_backup.services.configs import MemberCheck

ROOT = "opt/coderz/configs"


def _member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _check(*members: tarfile.TarInfo) -> None:
    check = MemberCheck([ROOT])
    for m in (_member(ROOT, tarfile.DIRTYPE), *members):
        check(m)


def test_a_link_climbing_out_through_an_earlier_link_of_the_archive_is_refused():
    # as text c/c/c/../../../secret stays inside; on disk (c -> .) it is <root>/../../../secret
    with pytest.raises(tarfile.LinkOutsideDestinationError, match="through the archive's own symlinks"):
        _check(_member(f"{ROOT}/c", tarfile.SYMTYPE, "."),
               _member(f"{ROOT}/a", tarfile.SYMTYPE, "c/c/c/../../../secret.txt"))


def test_a_chain_of_two_archive_links_is_followed_to_its_end():
    with pytest.raises(tarfile.LinkOutsideDestinationError, match="leads to /opt/coderz/x"):
        _check(_member(f"{ROOT}/up", tarfile.SYMTYPE, "."),
               _member(f"{ROOT}/deep", tarfile.SYMTYPE, "up/up"),
               _member(f"{ROOT}/b", tarfile.SYMTYPE, "deep/../x"))


def test_ordinary_links_of_a_config_tree_pass():
    _check(_member(f"{ROOT}/releases", tarfile.DIRTYPE),
           _member(f"{ROOT}/releases/v2", tarfile.DIRTYPE),
           _member(f"{ROOT}/releases/v2/app.conf"),
           _member(f"{ROOT}/current", tarfile.SYMTYPE, "releases/v2"),
           _member(f"{ROOT}/app.conf", tarfile.SYMTYPE, "current/app.conf"),
           _member(f"{ROOT}/abs.conf", tarfile.SYMTYPE, f"/{ROOT}/current/app.conf"))
