"""Off-site copies: every finished snapshot also goes to the targets of ``[offsite.<name>]``.

A target kind lives in one module (``offsite/<kind>.py``: its config model and its class
implementing :class:`~coderz_backup.offsite.base.Target`), registered by one line in
:data:`KINDS`; the config union follows. What is common to every kind — copy order, what makes
a remote copy complete, listing, fetching back — is :mod:`.copy`.

In a backup run each enabled target is one ``offsite-<name>`` task of the post-snapshot stage
(:mod:`coderz_backup.stages`), retried like a service: it pushes the new snapshot and every local
one the target is missing (a target that was down catches up on the next run). A failed copy
leaves the local snapshot as it is and makes the run ⚠️ (exit 1). After the pushes the stage
applies the target's retention (:mod:`.retention`: its ``keep_*`` keys, else the local ones);
``offsite push`` never deletes anything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Union

from pydantic import Field

from ..errors import ConfigError
from ..snapshot import SnapshotStore
from ..stages import StageResult
from .base import Target, TargetBase
from . import retention
from .copy import PushResult, complete_snapshots, fetch, push
from .dir import DirTarget
from .rsync import RsyncTarget
from .retention import Policy
from .s3 import S3Target

log = logging.getLogger(__name__)

__all__ = ["KINDS", "OffsiteStage", "PushResult", "Target", "TargetConfig", "complete_snapshots", "create",
           "fetch", "identities", "push", "setup_problems"]

#: every off-site target kind this version supports
KINDS: tuple[type, ...] = (DirTarget, S3Target, RsyncTarget)

TARGET_MODELS: dict[str, type[TargetBase]] = {cls.kind: cls.config_model for cls in KINDS}

#: one ``[offsite.<name>]`` table: the kind's model, chosen by its ``kind`` key
TargetConfig = Annotated[Union[tuple(TARGET_MODELS.values())], Field(discriminator="kind")]  # type: ignore[valid-type]


def create(name: str, config) -> Target:
    """The target object for an ``[offsite.<name>]`` table."""
    cls = next((c for c in KINDS if c.kind == config.kind), None)
    if cls is None:
        raise ConfigError(f"offsite.{name}", [f"kind {config.kind!r} is not supported by this version"])
    return cls(name, config)


def setup_problems(cfg) -> list[str]:
    """What keeps an enabled target from working on this host (a kind's optional ``setup_problems``:
    a missing binary, key or known_hosts file), for ``config check``."""
    out = []
    for name, config in (getattr(cfg, "offsite", None) or {}).items():
        cls = next((c for c in KINDS if c.kind == config.kind), None)
        if config.enabled and cls is not None and hasattr(cls, "setup_problems"):
            out += cls.setup_problems(name, config)
    return out


class OffsiteStage:
    """The post-snapshot step for one target: push the new snapshot, then what the target misses,
    then the target's retention (:mod:`.retention`)."""

    def __init__(self, name: str, config, store: SnapshotStore, policy: Policy | None = None):
        self.target_name = name
        self.name = f"offsite-{name}"
        self.config = config
        self.store = store
        self.policy = policy

    def run(self, snapshot: Path, manifest: dict) -> StageResult:
        """Raises (OffsiteError) when a copy fails: the flow retries the task, then records it failed."""
        target = create(self.target_name, self.config)
        recipients = self.config.recipients()
        pushed = [push(snapshot, target, recipients, parallel=self.config.parallel_files)]
        remote = set(complete_snapshots(target))
        local_snaps = self.store.list()
        local = {snap.name: snap.manifest for snap in local_snaps if isinstance(snap.manifest, dict)}
        missing = [snap for snap in local_snaps   # newest first: what an earlier failed run did not send
                   if snap.name != snapshot.name and snap.name not in remote and snap.manifest
                   and snap.manifest.get("status") in ("ok", "partial")]
        usable = (manifest or {}).get("status") in ("ok", "partial")
        skipped: list[str] = []
        if missing and self.policy is not None and not self.policy.forever:
            # never sent only to be deleted by the target's retention right after
            doomed = set(retention.plan_target(target, self.policy, current=snapshot.name, extra=missing,
                                                 local=local).plan.delete)
            skipped = [s.name for s in missing if s.name in doomed]
            for name in skipped:
                log.info("off-site %s: not catching up %s: the target's retention (%s) would not keep it",
                         self.target_name, name, self.policy.describe())
            missing = [s for s in missing if s.name not in doomed]
        for snap in missing:
            pushed.append(push(snap.path, target, recipients, parallel=self.config.parallel_files))
        sent = [p for p in pushed if not p.already_there]
        detail = (f"{pushed[0].files} files, {pushed[0].bytes} bytes to {target.describe()}"
                  if not pushed[0].already_there else f"already on {target.describe()}")
        if len(sent) > (0 if pushed[0].already_there else 1):
            detail += f"; caught up {', '.join(p.snapshot for p in sent if p.snapshot != snapshot.name)}"
        details = {
            "target": self.target_name, "kind": self.config.kind, "where": target.describe(),
            "snapshots": [p.snapshot for p in sent], "bytes": sum(p.bytes for p in sent),
            "files": sum(p.files for p in sent), "encrypted": bool(recipients)}
        if self.policy is not None:
            pruned = retention.prune(target, self.policy, current=snapshot.name, current_usable=usable,
                                     pushing=[p.snapshot for p in pushed], local=local)
            details.update(pruned=pruned.pruned, kept_locked=sorted(pruned.locked), not_caught_up=skipped)
            if pruned.pruned:
                detail += f"; pruned {len(pruned.pruned)}"
            if pruned.locked:
                detail += f"; {len(pruned.locked)} kept under Object Lock"
            if pruned.errors:
                details["prune_errors"] = pruned.errors
                detail += f"; retention: {len(pruned.errors)} problem(s), see the log"
        return StageResult(self.name, "ok", detail, details=details)


def identities(name: str, config, given: str | None = None) -> list:
    """The age identities that read target ``name``'s encrypted copies: ``given`` (``--identity``),
    else the target's ``identity`` key; [] when neither is set (plaintext copies need none)."""
    from .crypt import load_identities

    if given:
        return load_identities(given, what="--identity")
    if config.identity is not None:
        return load_identities(config.identity.get_secret_value(), what=f"offsite.{name}.identity")
    return []


def stages_for(cfg, store: SnapshotStore) -> list[OffsiteStage]:
    """One stage per enabled target, in config order, each with its retention (its keys, else ``cfg``'s)."""
    return [OffsiteStage(name, t, store, retention.policy_for(t, cfg))
            for name, t in (getattr(cfg, "offsite", None) or {}).items() if t.enabled]


