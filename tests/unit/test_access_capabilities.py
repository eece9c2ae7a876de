"""Access capabilities are declared, and the declarations are true (no servers, no Docker engine).

Every access class is walked: what it declares in ``capabilities`` it has the methods for (with
the capability's parameters), and a capability whose methods it has is declared (for at least
one way of configuring it). A missing capability gives the caller's clear message; services and
flows never probe an access by type or ``getattr``.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from coderz_backup.access import (ALL_CAPABILITIES, Access, Archives, Commands, ContainerControl, DataDirOps,
                                  DockerAccess, Files, Freezable, HostFiles, Lifecycle, LocalAccess,
                                  ManagedLifecycle, Precheck, PrefixAccess, ReplaceCheck, Shell, access_for,
                                  container_access, has, require)
from coderz_backup.access.capabilities import members
from coderz_backup.errors import AccessError, RestoreError

ROOT = Path(__file__).resolve().parents[2] / "coderz_backup"

#: every access class, in each of the ways it can be configured (constructing one reaches nothing)
INSTANCES = {
    "local": lambda: LocalAccess(),
    "prefix": lambda: PrefixAccess(["kubectl", "exec", "-i", "pod", "--"]),
    "docker container": lambda: DockerAccess("coderz-grafana"),
    "docker volume": lambda: DockerAccess(None, volume="coderz_grafana", volume_path="/var/lib/grafana"),
}

#: the table in the coderz_backup.access docstring
EXPECTED = {
    "local": {Commands, Files, Archives, Lifecycle, HostFiles, DataDirOps},
    "prefix": {Commands, Files, Archives, Lifecycle, DataDirOps, Shell},
    "docker container": {Commands, Files, Archives, Lifecycle, ManagedLifecycle, Freezable, DataDirOps,
                         ReplaceCheck, Precheck, Shell, ContainerControl},
    "docker volume": {Commands, Files, Archives, Lifecycle, Freezable, DataDirOps, ReplaceCheck, Precheck, Shell},
}

CLASSES = {LocalAccess: ["local"], PrefixAccess: ["prefix"], DockerAccess: ["docker container", "docker volume"]}


def _params(fn) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(fn).parameters.items() if n != "self"}


@pytest.mark.parametrize("how", sorted(INSTANCES))
def test_declared_capabilities_are_the_table(how):
    acc = INSTANCES[how]()
    assert set(acc.capabilities) == EXPECTED[how]
    assert set(acc.capabilities) <= set(ALL_CAPABILITIES)
    for cap in ALL_CAPABILITIES:
        assert has(acc, cap) == (cap in EXPECTED[how])


@pytest.mark.parametrize("how", sorted(INSTANCES))
def test_every_declared_capability_has_its_methods(how):
    acc = INSTANCES[how]()
    assert isinstance(acc.description, str) and acc.description
    for cap in acc.capabilities:
        for name in members(cap):
            impl = getattr(type(acc), name, None)
            assert callable(impl), f"{how} declares {cap.__name__} but has no {name}()"
            want, got = _params(getattr(cap, name)), _params(impl)
            if any(p.kind is p.VAR_KEYWORD for p in got.values()):
                continue
            for pname, p in want.items():
                if p.kind is p.VAR_POSITIONAL:
                    assert any(q.kind is q.VAR_POSITIONAL for q in got.values()), f"{how}.{name}: no *{pname}"
                    continue
                assert pname in got, f"{how}.{name}() lacks parameter {pname!r} of {cap.__name__}.{name}"
                if p.default is not p.empty:
                    assert got[pname].default is not p.empty, f"{how}.{name}(): {pname} needs a default"


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_every_ability_a_class_has_is_declared(cls):
    """Methods of a capability that no configuration of the class declares would be probed for, not asked."""
    declared = set().union(*(INSTANCES[how]().capabilities for how in CLASSES[cls]))
    for cap in ALL_CAPABILITIES:
        names = members(cap)
        own = names - set().union(*(members(b) for b in cap.__bases__ if b in ALL_CAPABILITIES))
        if own and all(callable(getattr(cls, n, None)) for n in names):   # markers (no own methods) are promises
            assert cap in declared, f"{cls.__name__} has every method of {cap.__name__} but does not declare it"


def test_every_access_is_an_access():
    """Commands, Files, Archives and Lifecycle together are Access: every access declares all four."""
    for how, make in INSTANCES.items():
        acc = make()
        for cap in (Commands, Files, Archives, Lifecycle):
            assert has(acc, cap), how
        assert members(Access) == members(Commands) | members(Files) | members(Archives) | members(Lifecycle)


def test_capabilities_extend_what_they_imply():
    for how, make in INSTANCES.items():
        acc = make()
        if has(acc, ContainerControl):
            assert has(acc, ManagedLifecycle), how
        if has(acc, ManagedLifecycle):
            assert has(acc, Lifecycle), how


def test_access_for_and_container_access_choose_by_config():
    class Cfg:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    assert type(access_for(Cfg())) is LocalAccess
    assert type(access_for(Cfg(exec_prefix=["env"]))) is PrefixAccess
    assert type(access_for(Cfg(container="c"))) is DockerAccess
    assert not has(access_for(Cfg(volume="v", data_dir="/data")), ManagedLifecycle)
    with pytest.raises(AccessError, match="set either container or exec_prefix, not both"):
        access_for(Cfg(container="c", exec_prefix=["env"]))
    acc = container_access("coderz-grafana")
    assert has(acc, ContainerControl) and acc.description == "docker container coderz-grafana"


def test_require_returns_the_access_typed_or_raises_the_clear_error():
    local = LocalAccess()
    assert require(local, HostFiles) is local
    with pytest.raises(AccessError, match=r"^local access cannot pause the service while its files are copied$"):
        require(local, Freezable)
    with pytest.raises(AccessError, match=r"^via kubectl exec -i pod -- access cannot check the service"):
        require(INSTANCES["prefix"](), Precheck)
    with pytest.raises(RestoreError, match=r"^grafana: docker access is needed to pause Grafana; nothing changed$"):
        require(local, Freezable, "grafana: docker access is needed to pause Grafana; nothing changed",
                error=RestoreError)


class _NoDataDirOps:
    """An access without DataDirOps (none of ours: the message is there for one that comes)."""

    description = "test"
    capabilities = frozenset({Commands, Files, Archives, Lifecycle})


def test_data_dir_kept_aside_needs_data_dir_ops(tmp_path):
    from coderz_backup.services.datadir import aside_path, move_aside

    with pytest.raises(RestoreError, match=r"^test access cannot keep the old data dir aside; nothing changed$"):
        move_aside(_NoDataDirOps(), str(tmp_path / "data"), "20250101000000")
    # the aside-path style follows HostFiles: a sibling here, inside the dir elsewhere
    assert aside_path(LocalAccess(), "/d/", "1") == "/d.coderz-old-1"
    assert aside_path(INSTANCES["prefix"](), "/d", "1") == "/d/.coderz-old-1"
    assert aside_path(INSTANCES["docker volume"](), "/d", "1") == "/d/.coderz-old-1"


def test_data_dir_kept_aside_on_this_host(tmp_path):
    from coderz_backup.services.datadir import move_aside

    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("old")
    old = move_aside(LocalAccess(), str(data), "1")
    assert old == f"{data}.coderz-old-1"
    assert (Path(old) / "f").read_text() == "old" and data.is_dir() and not any(data.iterdir())


def test_grafana_tarball_without_host_files_or_freezing_is_skipped(tmp_path):
    """Behind a command prefix nothing can pause Grafana: the data-dir tarball is skipped, said why."""
    from coderz_backup.services.grafana import GrafanaConfig, GrafanaService

    cfg = GrafanaConfig(kind="grafana", url="http://127.0.0.1:1", data_dir="/var/lib/grafana")
    svc = GrafanaService("grafana", cfg, INSTANCES["prefix"]())
    res = svc._data_tarball(tmp_path)
    assert res.status == "skipped"
    assert res.error == ("the data-dir tarball needs local or Docker access "
                         "(via kubectl exec -i pod --: the API export is the backup)")


_PROBES = re.compile(r"getattr\([^)]*access|type\([^)]*access[^)]*\)\s+is|isinstance\([^)]*access")


@pytest.mark.parametrize("folder", ["services", "flows"])
def test_services_and_flows_never_probe_an_access(folder):
    found = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _PROBES.search(line) or "DockerAccess(" in line or "PrefixAccess(" in line or "LocalAccess(" in line:
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "ask has()/require() (coderz_backup.access) instead:\n" + "\n".join(found)
