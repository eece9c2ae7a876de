"""Archive member checks: what a restore may write, decided from the archive alone.

:func:`coderz_backup.access.check_member` (with :class:`SeenMembers`) guards every data-dir
extract; :class:`coderz_backup.services.configs.MemberCheck` adds the configured paths of a
configs archive. Members are crafted the way a tampered archive would hold them.
"""

from __future__ import annotations

from coderz_backup.tarfile_compat import tarfile

import pytest

from coderz_backup.access import SeenMembers, check_member
from coderz_backup.services.configs import MemberCheck


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    return info


def d(name):
    return member(name, tarfile.DIRTYPE)


def f(name):
    return member(name)


def sym(name, target):
    return member(name, tarfile.SYMTYPE, target, 0o777)


def hard(name, target):
    return member(name, tarfile.LNKTYPE, target)


def run_all(members, root, seen=None):
    """Check members in order like an extract does; the first unsafe one raises."""
    seen = SeenMembers() if seen is None else seen
    for m in members:
        check_member(m, str(root), seen)


# -- check_member: any extract ------------------------------------------------------------


def test_an_ordinary_data_dir_passes(tmp_path):
    run_all([d("data"), f("data/dump.rdb"), sym("data/current", "dump.rdb"), hard("data/copy.rdb", "data/dump.rdb")],
            tmp_path)


@pytest.mark.parametrize("bad", [
    pytest.param(f("/etc/passwd"), id="absolute-name"),
    pytest.param(f("data/../../etc/passwd"), id="dotdot-name"),
    pytest.param(f("../outside"), id="leading-dotdot"),
    pytest.param(sym("data/x", "/etc/passwd"), id="symlink-to-absolute-outside"),
    pytest.param(sym("data/x", "../../etc"), id="symlink-escaping-relatively"),
    pytest.param(hard("data/x", "/etc/shadow"), id="hard-link-absolute"),
    pytest.param(hard("data/x", "../etc/shadow"), id="hard-link-dotdot"),
    pytest.param(member("data/tty", tarfile.CHRTYPE), id="character-device"),
    pytest.param(member("data/sda", tarfile.BLKTYPE), id="block-device"),
    pytest.param(member("data/pipe", tarfile.FIFOTYPE), id="fifo"),
])
def test_a_member_that_could_write_outside_the_root_is_refused(tmp_path, bad):
    with pytest.raises(tarfile.FilterError):
        check_member(bad, str(tmp_path), SeenMembers())


def test_a_member_through_an_earlier_symlink_of_the_archive_is_refused(tmp_path):
    with pytest.raises(tarfile.OutsideDestinationError, match="through the symlink data/link"):
        run_all([d("data"), sym("data/link", "."), f("data/link/x")], tmp_path)


def test_a_file_replacing_an_earlier_symlink_of_the_archive_is_refused(tmp_path):
    with pytest.raises(tarfile.OutsideDestinationError, match="write through a symlink"):
        run_all([d("data"), sym("data/x", "y"), f("data/x")], tmp_path)


def test_a_hard_link_to_an_earlier_symlink_of_the_archive_is_refused(tmp_path):
    with pytest.raises(tarfile.LinkOutsideDestinationError):
        run_all([d("data"), sym("data/s", "y"), hard("data/h", "data/s")], tmp_path)


def test_a_hard_link_to_a_file_already_on_disk_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious").write_text("not from the archive")

    with pytest.raises(tarfile.LinkOutsideDestinationError, match="earlier in the same archive"):
        run_all([d("data"), hard("data/h", "data/precious")], tmp_path)


def test_a_hard_link_to_a_file_that_comes_later_is_refused(tmp_path):
    with pytest.raises(tarfile.LinkOutsideDestinationError, match="earlier in the same archive"):
        run_all([d("data"), hard("data/h", "data/f"), f("data/f")], tmp_path)


def test_a_hard_link_to_an_earlier_folder_is_refused(tmp_path):
    with pytest.raises(tarfile.LinkOutsideDestinationError):
        run_all([d("data"), d("data/sub"), hard("data/h", "data/sub")], tmp_path)


def test_each_archive_starts_with_nothing_seen(tmp_path):
    run_all([d("data"), f("data/f")], tmp_path)   # its own SeenMembers

    with pytest.raises(tarfile.LinkOutsideDestinationError):
        run_all([hard("data/h", "data/f")], tmp_path)


# -- MemberCheck: a configs archive -------------------------------------------------------

ROOT = "opt/coderz/configs"
TREE = [d(ROOT), f(f"{ROOT}/docker-compose.yml"), d(f"{ROOT}/nginx"), f(f"{ROOT}/nginx/site.conf")]


def configs_check(members, roots=(ROOT,)):
    check = MemberCheck(list(roots))
    for m in members:
        check(m)


def test_an_ordinary_configs_tree_passes():
    configs_check(TREE + [sym(f"{ROOT}/current.conf", "nginx/site.conf"),
                          hard(f"{ROOT}/nginx/copy.conf", f"{ROOT}/nginx/site.conf")])


def test_an_absolute_symlink_inside_the_same_configured_path_passes():
    configs_check(TREE + [sym(f"{ROOT}/abs.conf", f"/{ROOT}/nginx/site.conf")])


def test_a_member_outside_the_configured_paths_is_refused():
    with pytest.raises(tarfile.OutsideDestinationError, match="not under the configured paths /opt/coderz/configs"):
        configs_check(TREE + [f("etc/cron.d/evil")])


def test_a_member_whose_folder_the_archive_did_not_create_first_is_refused():
    with pytest.raises(tarfile.OutsideDestinationError, match="its folder is not in the archive before it"):
        configs_check([d(ROOT), f(f"{ROOT}/nginx/site.conf")])


@pytest.mark.parametrize("link", [sym(ROOT, "/tmp"), hard(ROOT, "etc/passwd")], ids=["symlink", "hard-link"])
def test_a_configured_path_archived_as_a_link_is_refused(link):
    with pytest.raises(tarfile.FilterError, match="a configured path archived as a link"):
        configs_check([link])


def test_a_symlink_into_another_configured_path_is_refused():
    other = "etc/app"
    with pytest.raises(tarfile.LinkOutsideDestinationError, match="outside the configured path /opt/coderz/configs"):
        configs_check([d(other), d(ROOT), sym(f"{ROOT}/x", f"/{other}")], roots=(ROOT, other))


def test_a_relative_symlink_climbing_out_of_the_configured_path_is_refused():
    with pytest.raises(tarfile.LinkOutsideDestinationError):
        configs_check(TREE + [sym(f"{ROOT}/nginx/up", "../../secrets")])


def test_a_hard_link_in_a_configs_archive_must_point_to_an_earlier_file():
    with pytest.raises(tarfile.LinkOutsideDestinationError, match="earlier in the same archive"):
        configs_check(TREE + [hard(f"{ROOT}/x", f"{ROOT}/later.conf"), f(f"{ROOT}/later.conf")])


@pytest.mark.parametrize("bad", [
    pytest.param(f(f"/{ROOT}/x"), id="absolute-name"),
    pytest.param(f(f"{ROOT}/../../../etc/passwd"), id="dotdot"),
    pytest.param(member(f"{ROOT}/tty", tarfile.CHRTYPE), id="device"),
    pytest.param(f(f"{ROOT}/current.conf/inner"), id="through-an-archive-symlink"),
])
def test_the_generic_member_checks_apply_to_configs_archives_too(bad):
    with pytest.raises(tarfile.FilterError):
        configs_check(TREE + [sym(f"{ROOT}/current.conf", "nginx"), bad])
