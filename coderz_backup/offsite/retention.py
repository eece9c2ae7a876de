"""Retention on an off-site target: the local rules (:func:`coderz_backup.rotation.plan`) applied
to the target's complete copies, after the backup stage's pushes.

- Each target keeps ``keep_days`` / ``keep_daily`` / ``keep_weekly`` / ``keep_monthly`` of its
  ``[offsite.<name>]`` table; a key left unset takes the local value (:func:`policy_for`).
  ``keep_days = 0`` keeps everything there.
- Candidates are the complete remote snapshots (:func:`~.copy.complete_snapshots`); each one's
  status comes from its remote ``manifest.json`` (a bounded read). A copy whose manifest cannot
  be read or is no JSON object is kept, with a log line saying why.
- Never deleted: the newest complete copy, the snapshot this run pushed, the newest ok one,
  the newest ok copy of every artifact, what the GFS keeps name, anything younger than
  ``keep_days`` — and nothing at all when the run produced nothing usable.
- A snapshot still under Object Lock (the target's optional ``lock_status``) is left whole,
  one log line for it: on a versioned bucket a delete would only hide the locked copy behind
  delete markers while its data stays.
- Incomplete remote folders (a snapshot name, no signature: an interrupted push) older than
  ``keep_days`` and not being pushed now are removed too, one log line each. Names that are
  not snapshot names are never touched.

A failure while pruning is logged and reported, never an error of the copy that succeeded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import OffsiteError
from ..rotation import RotationPlan, describe_policy, plan
from ..snapshot import MANIFEST, SNAPSHOT_NAME, SnapshotInfo, parse_snapshot_name
from .base import Target
from .copy import _remote_bytes, complete_snapshots
from .crypt import is_encrypted

__all__ = ["Policy", "PruneResult", "plan_target", "policy_for", "prune"]

log = logging.getLogger(__name__)

KEYS = ("keep_days", "keep_daily", "keep_weekly", "keep_monthly")


@dataclass(frozen=True)
class Policy:
    """How many snapshots a target keeps (the arguments of :func:`coderz_backup.rotation.plan`)."""

    keep_days: int
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    @property
    def forever(self) -> bool:
        return self.keep_days <= 0

    def describe(self) -> str:
        return describe_policy(self.keep_days, self.keep_daily, self.keep_weekly, self.keep_monthly)

    def kwargs(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in KEYS}


def policy_for(target_config, local) -> Policy:
    """The target's policy: each of its keys, or the local one (``local``: the Config) when unset."""
    return Policy(**{k: (getattr(target_config, k, None) if getattr(target_config, k, None) is not None
                         else getattr(local, k, 0) or 0) for k in KEYS})


@dataclass
class TargetPlan:
    plan: RotationPlan
    complete: list[str]                    # newest first
    unreadable: dict[str, str] = field(default_factory=dict)   # name → why its manifest was not used


@dataclass
class PruneResult:
    deleted: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)        # interrupted pushes removed
    locked: dict[str, str] = field(default_factory=dict)       # name → "under Object Lock until …"
    errors: list[str] = field(default_factory=list)

    @property
    def pruned(self) -> list[str]:
        return sorted(self.deleted + self.incomplete)


def _remote_info(target: Target, name: str, local: dict[str, dict] | None = None
                 ) -> tuple[SnapshotInfo | None, str | None]:
    try:
        raw = _remote_bytes(target, f"{name}/{MANIFEST}")
        if is_encrypted(raw):
            # an encrypted copy (encrypt_to): this host cannot read it and should not hold the
            # identity. The same snapshot here has the same manifest; one no longer here was a
            # finished, usable snapshot when it was sent (only those are), so it counts as ok.
            manifest = (local or {}).get(name) or {"snapshot": name, "status": "ok", "artifacts": []}
            return SnapshotInfo(name, Path(name), manifest, b""), None
        manifest = json.loads(raw)
    except OffsiteError as exc:
        return None, str(exc)
    except (ValueError, RecursionError):
        return None, "its manifest.json is not valid JSON"
    if not isinstance(manifest, dict):
        return None, "its manifest.json is not a JSON object"
    return SnapshotInfo(name, Path(name), manifest, raw), None


def plan_target(target: Target, policy: Policy, *, current: str | None, extra: Iterable[SnapshotInfo] = (),
                now: dt.datetime | None = None, local: dict[str, dict] | None = None) -> TargetPlan:
    """The plan for ``target``'s complete copies (plus ``extra``: local snapshots that would be sent
    there, so a catch-up never sends what retention would delete at once)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    complete = complete_snapshots(target)
    infos, unreadable = [], {}
    for name in complete:
        info, why = _remote_info(target, name, local)
        if info is None:
            unreadable[name] = why or "unreadable"
        else:
            infos.append(info)
    have = {i.name for i in infos} | set(unreadable)
    infos += [s for s in extra if s.name not in have]
    p = plan(infos, now=now, latest=complete[0] if complete else None, current=current, current_usable=True,
             latest_reason="newest complete copy", **policy.kwargs())
    return TargetPlan(p, complete, unreadable)


def prune(target: Target, policy: Policy, *, current: str | None, current_usable: bool = True,
          pushing: Iterable[str] = (), now: dt.datetime | None = None,
          local: dict[str, dict] | None = None) -> PruneResult:
    """Apply ``policy`` to ``target`` after this run's pushes (see the module docstring)."""
    result = PruneResult()
    where = f"off-site {target.name}"
    if policy.forever:
        log.info("%s: retention keep 0 = keep forever, nothing deleted", where)
        return result
    if not current_usable:
        log.warning("%s: retention skipped: this run produced no usable snapshot, nothing deleted", where)
        return result
    now = now or dt.datetime.now(dt.timezone.utc)
    cutoff = now - dt.timedelta(days=policy.keep_days)
    try:
        tp = plan_target(target, policy, current=current, now=now, local=local)
        everything = target.names()
    except OffsiteError as exc:
        log.warning("%s: retention skipped: %s", where, exc)
        result.errors.append(str(exc))
        return result
    for name, why in tp.unreadable.items():
        log.warning("%s: kept %s: its manifest cannot be used (%s)", where, name, why)
    for name, why in tp.plan.keep_reasons.items():
        log.info("%s: keeping %s although older than %d days (%s)", where, name, policy.keep_days, why)
    for name in tp.plan.delete:
        try:
            locked = _lock_status(target, name)
            if locked:
                result.locked[name] = locked
                log.info("%s: kept %s: %s", where, name, locked)
                continue
            target.remove(name)
        except OffsiteError as exc:
            log.warning("%s: could not delete %s: %s", where, name, exc)
            result.errors.append(str(exc))
            continue
        result.deleted.append(name)
        log.info("%s: deleted %s (older than %d days, retention %s)", where, name, policy.keep_days,
                 policy.describe())
    busy = set(pushing) | set(tp.complete) | ({current} if current else set())
    for name in everything:
        when = parse_snapshot_name(name) if SNAPSHOT_NAME.match(name) else None
        if when is None or name in busy or when >= cutoff:
            continue
        try:
            if not target.names(name):   # a file named like a snapshot, or nothing: not a copy
                continue
        except OffsiteError:
            continue
        try:
            target.remove(name)
        except OffsiteError as exc:
            log.warning("%s: could not remove the incomplete copy %s: %s", where, name, exc)
            result.errors.append(str(exc))
            continue
        result.incomplete.append(name)
        log.info("%s: removed %s, an incomplete copy (no signature) older than %d days left by an interrupted "
                 "push", where, name, policy.keep_days)
    if not result.deleted and not result.incomplete:
        log.info("%s: retention %s: nothing to delete", where, policy.describe())
    return result


def _lock_status(target: Target, name: str) -> str | None:
    """Why ``name`` may not be deleted yet (its signature is written last: the latest lock of the copy)."""
    from ..signing import SIGNATURE_FILE

    check = getattr(target, "lock_status", None)
    return check(f"{name}/{SIGNATURE_FILE}") if check is not None else None
