"""Prepare a Prefect server for coderz-backup: ``coderz-backup setup``.

Creates what the deployments in ``prefect.yaml`` need, idempotently. Anything that
already exists is left as it is, and the output says so:

- the work pool (default ``coderz-backup``, type ``process`` or ``docker``), from the
  base job template in ``deployments/<type>-pool.json`` (shipped in the package);
- the deployment ``coderz-backup-missed/coderz-backup-missed`` on that pool and the automation
  ``coderz-backup missed run``: a proactive trigger — no Completed ``coderz-backup-daily`` run
  within ``[monitor] missed_after_h`` (default 26 h, ``--missed-after``) — whose action runs that
  deployment, which mails ``🔴 Coderz Backup MISSED …`` (:mod:`coderz_backup.flows.missed`).
  Re-running setup with another window updates the automation;
- optionally (``email_block``) a prefect-email ``EmailServerCredentials`` block saved
  from the config's ``[email]`` table, so flows can refer to it by name.

This module talks to the API through Prefect's client. It has no flows or tasks.
Errors are :mod:`coderz_backup.errors` exceptions: :class:`AccessError` when the API
cannot be reached or refuses a request, :class:`ConfigError` for a bad template, pool
type or ``[email]`` table.

Example::

    >>> from coderz_backup.setup import setup
    >>> for line in setup():            # PREFECT_API_URL must point at the server
    ...     print(line)
    ✓ Prefect API http://127.0.0.1:4200/api reachable
    ✓ work pool 'coderz-backup' (process) created from deployments/process-pool.json
    ✓ deployment coderz-backup-missed/coderz-backup-missed on pool 'coderz-backup'
    ✓ automation 'coderz-backup missed run' created: no Completed coderz-backup-daily run within 26 h → …
    …
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any

from .errors import AccessError, CoderzBackupError, ConfigError

__all__ = [
    "DEFAULT_POOL",
    "MISSED_AUTOMATION",
    "MISSED_DEPLOYMENT",
    "missed_trigger",
    "parse_duration_h",
    "POOL_TYPES",
    "TEMPLATES_DIR",
    "load_base_job_template",
    "register_cli",
    "run_cli",
    "setup",
]

DEFAULT_POOL = "coderz-backup"
POOL_TYPES = ("process", "docker")
#: the pool templates, shipped in the package (``deployments/*-pool.json`` of a checkout link to them)
TEMPLATES_DIR = Path(__file__).resolve().parent / "deployments"
EMAIL_BLOCK_TYPE = "email-server-credentials"
MISSED_FLOW = "coderz-backup-missed"
MISSED_DEPLOYMENT = f"{MISSED_FLOW}/coderz-backup-missed"
MISSED_ENTRYPOINT = "coderz_backup.flows.missed:coderz_backup_missed"
MISSED_AUTOMATION = "coderz-backup missed run"

_NO_API = ("PREFECT_API_URL is not set. setup registers the work pool on your Prefect server: start one "
           "(`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api "
           "(or `prefect config set PREFECT_API_URL=…`).")


def template_path(pool_type: str, template: str | Path | None = None) -> Path:
    """The base job template file to use for ``pool_type``."""
    return Path(template) if template else TEMPLATES_DIR / f"{pool_type}-pool.json"


def load_base_job_template(pool_type: str, template: str | Path | None = None) -> dict[str, Any]:
    """Read and sanity-check a work-pool base job template (``job_configuration`` + ``variables``)."""
    if pool_type not in POOL_TYPES:
        raise ConfigError("--type", [f"unknown work pool type {pool_type!r}; choose one of {', '.join(POOL_TYPES)}"])
    path = template_path(pool_type, template)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), [("base job template not found; run setup from a checkout of coderz-backup "
                                       "(installed with `pip install -e .`) or pass --template FILE")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read the base job template: {exc}"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), [f"not valid JSON: {exc}"]) from None
    problems = [f"missing top-level object {key!r}" for key in ("job_configuration", "variables")
                if not isinstance(data.get(key) if isinstance(data, dict) else None, dict)]
    if problems:
        raise ConfigError(str(path), [*problems, ("expected the shape of "
                                                  "`prefect work-pool get-default-base-job-template --type TYPE`")])
    return data


def _api_url() -> str:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise AccessError(_NO_API)
    return str(url)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(TEMPLATES_DIR.parent))
    except ValueError:
        return str(path)


def parse_duration_h(text: str) -> float:
    """``26h`` / ``90m`` / ``30s`` / ``26`` (hours) → hours; ValueError when it is not one."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([hms]?)\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 26h, 90m or 30s")
    value = float(m.group(1)) / {"h": 1, "": 1, "m": 60, "s": 3600}[m.group(2)]
    if value * 3600 < 10:
        raise ValueError(f"{text!r} is shorter than 10 s, the least a Prefect proactive trigger accepts")
    return value


def _hours_text(h: float) -> str:
    s = h * 3600
    return f"{h:g} h" if s >= 3600 else f"{s / 60:g} min" if s >= 60 else f"{s:g} s"


def missed_trigger(window_h: float):
    """The automation's trigger: fewer than one ``prefect.flow-run.Completed`` event of a run of
    deployment ``coderz-backup-daily`` (flow ``coderz-backup``) within ``window_h`` hours."""
    from prefect.events.schemas.automations import EventTrigger, Posture

    return EventTrigger(
        posture=Posture.Proactive,
        expect={"prefect.flow-run.Completed"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related=[{"prefect.resource.role": "flow", "prefect.resource.name": "coderz-backup"},
                       {"prefect.resource.role": "deployment", "prefect.resource.name": "coderz-backup-daily"}],
        threshold=1,
        within=dt.timedelta(seconds=round(window_h * 3600, 3)),
    )


def _ensure_missed_alert(client, pool: str, window_h: float) -> list[str]:
    """The coderz-backup-missed deployment (upserted) and the automation that runs it."""
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore
    from prefect.utilities.callables import parameter_schema

    from .flows.missed import coderz_backup_missed

    flow_id = client.create_flow_from_name(MISSED_FLOW)
    deployment_id = client.create_deployment(
        flow_id=flow_id, name=MISSED_DEPLOYMENT.split("/", 1)[1], entrypoint=MISSED_ENTRYPOINT,
        work_pool_name=pool, parameters={}, tags=["coderz", "monitor"],
        description="Mails 🔴 Coderz Backup MISSED; started by the automation "
                    f"{MISSED_AUTOMATION!r} (coderz-backup setup), not by a schedule.",
        parameter_openapi_schema=parameter_schema(coderz_backup_missed).model_dump(exclude_unset=True),
        enforce_parameter_schema=True,
    )
    lines = [f"✓ deployment {MISSED_DEPLOYMENT} on pool {pool!r} (runs from the installed package)"]
    automation = AutomationCore(
        name=MISSED_AUTOMATION,
        description=f"No Completed coderz-backup-daily run within {_hours_text(window_h)}: run "
                    f"{MISSED_DEPLOYMENT}, which mails 🔴 Coderz Backup MISSED (made by coderz-backup setup)",
        enabled=True,
        trigger=missed_trigger(window_h),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id, parameters={"window_h": window_h})],
    )
    what = (f"no Completed coderz-backup-daily run within {_hours_text(window_h)} → runs {MISSED_DEPLOYMENT} "
            "(🔴 MISSED mail)")
    existing = client.read_automations_by_name(MISSED_AUTOMATION)
    if not existing:
        client.create_automation(automation)
        return [*lines, f"✓ automation {MISSED_AUTOMATION!r} created: {what}"]
    first, *extra = existing
    for dup in extra:   # two setups racing: keep one
        client.delete_automation(dup.id)

    def essence(a) -> dict:
        return {"enabled": a.enabled, "trigger": a.trigger.model_dump(exclude={"id"}),
                "actions": [x.model_dump() for x in a.actions]}

    if essence(first) == essence(automation):
        return [*lines, f"= automation {MISSED_AUTOMATION!r} already exists, left unchanged: {what}"]
    client.update_automation(first.id, automation)
    return [*lines, f"✓ automation {MISSED_AUTOMATION!r} updated: {what}"]


def _missed_window(missed_after_h: float | None, config: str | Path | None) -> float:
    if missed_after_h is not None:
        return missed_after_h
    from .config import load

    return load(config).monitor.missed_after_h   # no file at the default path: the defaults (26 h)


def setup(
    pool: str = DEFAULT_POOL,
    pool_type: str = "process",
    *,
    email_block: str | None = None,
    config: str | Path | None = None,
    template: str | Path | None = None,
    missed_alert: bool = True,
    missed_after_h: float | None = None,
) -> list[str]:
    """Create the work pool (and optionally the e-mail block) if missing.

    Args:
        pool: work pool name; ``prefect.yaml`` deploys to ``coderz-backup``.
        pool_type: ``process`` (flow runs as subprocesses of the worker) or ``docker``
            (one container per flow run, needs prefect-docker on the worker).
        email_block: also save the config's ``[email]`` settings as an
            ``EmailServerCredentials`` block of this name, unless one exists.
        config: config file for ``email_block`` (default: ``$CODERZ_BACKUP_CONFIG``, then
            ``/opt/coderz/backup/coderz-backup.toml``).
        template: base job template file (default ``deployments/<pool_type>-pool.json``).
        missed_alert: also create the missed-run deployment and automation.
        missed_after_h: their window in hours (default the config's ``[monitor] missed_after_h``, 26).

    Returns:
        Human-readable lines saying what was done or found.

    Raises:
        ConfigError: unknown pool type, unreadable template, no ``[email]`` table.
        AccessError: the Prefect API is not configured, not reachable or refused a request.
    """
    base_job_template = load_base_job_template(pool_type, template)  # bad input fails before any API call
    url = _api_url()
    email = _email_settings(config) if email_block else None
    window_h = _missed_window(missed_after_h, config) if missed_alert else None

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    lines: list[str] = []
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
        if problem is not None:
            raise AccessError(f"cannot reach the Prefect API at {url}: {type(problem).__name__}: {problem}. "
                              "Is the server running (`prefect server start`) and PREFECT_API_URL right?")
        lines.append(f"✓ Prefect API {url} reachable")

        try:
            try:
                existing = client.read_work_pool(pool)
            except ObjectNotFound:
                existing = None
            if existing is None:
                try:
                    client.create_work_pool(WorkPoolCreate(
                        name=pool, type=pool_type, base_job_template=base_job_template,
                        description="coderz-backup: runs the coderz-backup deployments (see prefect.yaml)",
                    ))
                    lines.append(f"✓ work pool {pool!r} ({pool_type}) created from "
                                 f"{_display(template_path(pool_type, template))}")
                except ObjectAlreadyExists:  # created by someone else in the meantime
                    existing = client.read_work_pool(pool)
            if existing is not None:
                lines.append(f"= work pool {pool!r} ({existing.type}) already exists, left unchanged")
                if existing.type != pool_type:
                    lines.append(f"! work pool {pool!r} is a {existing.type} pool, not {pool_type}: to change it, "
                                 f"`prefect work-pool delete {pool}` and run setup again")
            if window_h is not None:
                lines.extend(_ensure_missed_alert(client, pool, window_h))
            if email_block:
                lines.append(_ensure_email_block(client, email_block, email))
        except CoderzBackupError:
            raise
        except Exception as exc:  # httpx / PrefectHTTPStatusError: the API refused or went away
            raise AccessError(f"the Prefect API at {url} refused setup: {type(exc).__name__}: {exc}") from exc

    deploy = ("prefect --no-prompt deploy --all" if pool == DEFAULT_POOL
              else f"prefect --no-prompt deploy --name coderz-backup-daily --pool {pool}")
    lines.append(f"next: from the repository root `{deploy}`, "
                 f"then keep a worker running: `prefect worker start --pool {pool}`")
    return lines


# -- e-mail block ---------------------------------------------------------------------
def _email_settings(config: str | Path | None) -> dict[str, Any]:
    from .config import load, resolve_secret

    cfg = load(config)
    email = cfg.email
    if email is None:
        raise ConfigError(cfg.source, ["no [email] table: --email-block saves the SMTP settings from it"])
    password = resolve_secret(email.password, what="email.password") if email.password is not None else None
    return {"smtp_server": email.smtp_host, "smtp_port": email.smtp_port, "smtp_type": email.smtp_type,
            "username": email.username, "password": password or "", "source": cfg.source}


def _ensure_email_block(client, name: str, settings: dict[str, Any] | None) -> str:
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_block_document_by_name(name, block_type_slug=EMAIL_BLOCK_TYPE)
        return f"= e-mail block {name!r} ({EMAIL_BLOCK_TYPE}) already exists, left unchanged"
    except ObjectNotFound:
        pass
    from prefect_email import EmailServerCredentials

    assert settings is not None
    fields = {k: v for k, v in settings.items() if k != "source" and v is not None}
    EmailServerCredentials(**fields).save(name)
    return f"✓ e-mail block {name!r} ({EMAIL_BLOCK_TYPE}) saved from {settings['source']} [email]"


# -- command line (wired into coderz_backup.cli) --------------------------------------
def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``setup`` to the ``coderz-backup`` sub-commands; dispatch to :func:`run_cli`."""
    p = subparsers.add_parser(
        "setup", help="create the Prefect work pool and the missed-run automation (idempotent)",
        description="Create the Prefect work pool the deployments in prefect.yaml run on, from "
                    "deployments/<type>-pool.json (an existing pool is left unchanged), and the missed-run "
                    "automation: no Completed coderz-backup-daily run within --missed-after runs deployment "
                    "coderz-backup-missed/coderz-backup-missed, which mails 🔴 Coderz Backup MISSED. "
                    "Needs PREFECT_API_URL. "
                    "Then: `prefect --no-prompt deploy --all` from the repository root and "
                    "`prefect worker start --pool NAME`. Exit 0 done, 2 error.")
    p.add_argument("--pool", metavar="NAME", default=DEFAULT_POOL, help=f"work pool name (default {DEFAULT_POOL})")
    p.add_argument("--type", dest="pool_type", choices=POOL_TYPES, default="process",
                   help="process: flow runs as worker subprocesses (default); docker: one container per run")
    p.add_argument("--template", metavar="FILE", help="base job template (default deployments/<type>-pool.json)")
    p.add_argument("--email-block", metavar="NAME",
                   help="also save the config's [email] SMTP settings as EmailServerCredentials block NAME")
    p.add_argument("--config", metavar="F", help="TOML config file for --email-block and [monitor] missed_after_h "
                   "(env CODERZ_BACKUP_CONFIG)")
    p.add_argument("--missed-after", metavar="DURATION", type=_duration, default=None,
                   help="window of the missed-run automation, e.g. 26h, 90m, 30s (default: the config's "
                        "[monitor] missed_after_h, else 26h)")
    p.add_argument("--no-missed-alert", dest="missed_alert", action="store_false",
                   help="do not create the missed-run deployment and automation")
    p.set_defaults(run=run_cli)
    return p


def _duration(text: str) -> float:
    try:
        return parse_duration_h(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_cli(args: argparse.Namespace) -> int:
    """Run ``coderz-backup setup``: print what was done; 0 ok, 2 on error."""
    try:
        lines = setup(args.pool, args.pool_type, email_block=getattr(args, "email_block", None),
                      config=getattr(args, "config", None), template=getattr(args, "template", None),
                      missed_alert=getattr(args, "missed_alert", True),
                      missed_after_h=getattr(args, "missed_after", None))
    except CoderzBackupError as exc:
        print(f"✗ setup failed: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0
