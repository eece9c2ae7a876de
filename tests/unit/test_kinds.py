"""Every service kind is declared in one place, and everything else is derived from that declaration."""

from __future__ import annotations

import typing

import pytest
from pydantic import TypeAdapter, ValidationError

from coderz_backup import config as config_module
from coderz_backup.config import default_services, load
from coderz_backup.schema import ServiceBase
from coderz_backup.services import KIND_MODELS, KINDS, REGISTRY, ServiceConfig, expected_artifacts


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.kind)
def test_a_kind_declares_its_config_model_in_its_own_module(cls):
    model = cls.config_model
    assert issubclass(model, ServiceBase)
    assert model.__module__ == cls.__module__          # next to its code, not in config.py
    assert typing.get_args(model.model_fields["kind"].annotation) == (cls.kind,)
    assert isinstance(model.order, int) and model.default_min_bytes >= 1


def test_the_registry_and_the_config_union_are_derived_from_the_kinds():
    assert list(REGISTRY) == [c.kind for c in KINDS] == list(KIND_MODELS)
    union = typing.get_args(typing.get_args(ServiceConfig)[0])
    assert set(union) == {c.config_model for c in KINDS}
    assert config_module.KIND_MODELS is KIND_MODELS   # config.py holds no list of its own


def test_the_config_union_picks_the_model_by_kind_and_names_unknown_kinds():
    adapter = TypeAdapter(ServiceConfig)
    parsed = adapter.validate_python({"kind": "redis"})
    assert type(parsed) is REGISTRY["redis"].config_model
    with pytest.raises(ValidationError, match="mysql"):
        adapter.validate_python({"kind": "mysql"})


def test_every_default_service_is_a_registered_kind_with_its_artifacts_known_up_front():
    cfg = load(None, env={})
    assert set(cfg.services) == set(default_services())
    for name, svc in cfg.services.items():
        assert svc.kind in REGISTRY
        paths = expected_artifacts(name, svc)
        assert paths and all(not p.startswith("/") and ".." not in p for p in paths)


def test_report_sections_come_from_the_kind():
    cfg = load(None, env={})
    titles = {name: svc.report_title(name) for name, svc in cfg.services.items()}
    assert titles["postgres-prefect"] == "PostgreSQL — Prefect DB"   # the default's own title
    assert titles["redis"] == "Redis" and titles["etcd-apisix"] == "etcd Snapshots"
    pg = REGISTRY["postgres"].config_model(kind="postgres", user="u", database="shop")
    assert pg.report_title("db") == "PostgreSQL — shop"
