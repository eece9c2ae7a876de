"""The boxed terminal report of the product document, and human-readable sizes."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

__all__ = ["human_size", "header", "section_line", "summary", "render_report", "BOX_WIDTH"]

BOX_WIDTH = 54  # characters between the box's side walls


def human_size(n: int | float) -> str:
    """Size like ``ls -lh``: 512B, 128K, 1.2M, 45M, 3.1G (powers of 1024, rounded up)."""
    n = float(n)
    if n < 1024:
        return f"{int(n)}B"
    for unit in "KMGTP":
        n /= 1024
        if n < 1024 or unit == "P":
            if n < 10:
                v = math.ceil(n * 10) / 10
                if v < 10:
                    return f"{v:.1f}{unit}"
                n = v
            v = math.ceil(n)
            if v < 1024 or unit == "P":
                return f"{v}{unit}"
            n = v
    return f"{int(n)}P"  # pragma: no cover


def _box(title: str, rows: Iterable[str]) -> list[str]:
    w = BOX_WIDTH
    out = ["╔" + "═" * w + "╗", "║ " + title.ljust(w - 2) + " ║", "╠" + "═" * w + "╣"]
    out += ["║ " + r.ljust(w - 2) + " ║" for r in rows]
    out.append("╚" + "═" * w + "╝")
    return out


def header(timestamp: str) -> list[str]:
    return _box("Coderz Stack — Full Backup", [f"Timestamp : {timestamp}"])


def section_line(index: int, total: int, title: str) -> str:
    text = f"── {index}/{total} {title} "
    return text + "─" * max(3, BOX_WIDTH + 2 - len(text))


def summary(passed: int, failed: int, skipped: int, total_bytes: int, *, title: str = "Backup Complete") -> list[str]:
    return _box(title, [
        f"✓ Passed : {passed}",
        f"✗ Failed : {failed}",
        f"- Skipped : {skipped}",
        f"Total size: {human_size(total_bytes)}",
    ])


def render_report(manifest: dict, offsite: Sequence[dict] = ()) -> str:
    """The product document's boxed report for a finished snapshot's manifest (and its off-site copies)."""
    lines = header(manifest["snapshot"])
    sections: dict[str, list[dict]] = {}
    for a in manifest["artifacts"]:
        sections.setdefault(a.get("section") or a["service"], []).append(a)
    total = len(sections) + (1 if offsite else 0)
    for i, (title, arts) in enumerate(sections.items(), 1):
        lines.append(section_line(i, total, title))
        for a in arts:
            name = a["path"].rstrip("/")
            if a["status"] == "ok":
                lines += [f"✓ {extra}" for extra in a.get("report_lines") or []]
                lines.append(f"✓ {a['summary']}" if a.get("summary") else f"✓ {name} ({human_size(a['bytes'])})")
            elif a["status"] == "skipped":
                lines.append(f"- {name} — skipped: {a.get('error') or ''}")
            else:
                first = (a.get("error") or "failed").splitlines()[0]
                lines.append(f"✗ {name} — {first}")
    if offsite:
        lines.append(section_line(total, total, "Off-site"))
        for r in offsite:
            mark = "✓" if r["status"] == "ok" else "✗"
            lines.append(f"{mark} {r['stage'].removeprefix('offsite-')}: {r['detail'].splitlines()[0]}")
    for finding in (manifest.get("size_check") or {}).get("findings", []):
        lines.append(f"⚠ size check: {finding['message']}")
    title = {"ok": "Backup Complete", "partial": "Backup Completed with Failures"}.get(
        manifest["status"], "Backup FAILED")
    lines += summary(manifest["passed"], manifest["failed"], manifest["skipped"], manifest["total_bytes"],
                     title=title)
    return "\n".join(lines)
