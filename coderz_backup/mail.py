"""Sending one alert mail through prefect-email — from a flow's task, from a flow hook, or from
the CLI when the flow could not even start (no Prefect API needed, except for a saved block).

prefect-email opens smtplib connections without a timeout: a server that accepts and never
answers would hang the run (and the 03:00 schedule behind it) forever, so every attempt runs
in a daemon thread that is given up after ``email.timeout_s``.
"""

from __future__ import annotations

import logging
import threading
import time

from .errors import ConfigError

__all__ = ["send", "send_with_retries"]


def _credentials(email_cfg):
    from prefect_email import EmailServerCredentials

    from .config import resolve_secret

    if email_cfg.block:
        return EmailServerCredentials.load(email_cfg.block, _sync=True)
    kwargs = dict(smtp_server=email_cfg.smtp_host, smtp_port=email_cfg.smtp_port, smtp_type=email_cfg.smtp_type)
    if email_cfg.username:  # leave unset without AUTH: setting it against such a server fails
        kwargs.update(username=email_cfg.username,
                      password=resolve_secret(email_cfg.password, what="email.password") or "")
    return EmailServerCredentials(**kwargs)


def send(email_cfg, subject: str, html: str, text: str) -> None:
    """One attempt; raises what went wrong (TimeoutError after ``timeout_s``)."""
    import anyio
    from prefect_email import email_send_message

    if not email_cfg.to:
        raise ConfigError("email", ["email.to: no recipients configured"])
    credentials = _credentials(email_cfg)
    outcome: list[BaseException | None] = []

    def _attempt() -> None:
        try:
            anyio.run(lambda: email_send_message.fn(
                subject=subject, msg=html, msg_plain=text, email_server_credentials=credentials,
                email_from=email_cfg.from_, email_to=list(email_cfg.to)))
            outcome.append(None)
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)

    sender = threading.Thread(target=_attempt, name="coderz-send-mail", daemon=True)
    sender.start()
    sender.join(email_cfg.timeout_s)
    if not outcome:
        where = (f"the SMTP server of block {email_cfg.block!r}" if email_cfg.block
                 else f"SMTP server {email_cfg.smtp_host}:{email_cfg.smtp_port}")
        raise TimeoutError(f"{where} did not finish within {email_cfg.timeout_s:g}s (email.timeout_s)")
    if outcome[0] is not None:
        raise outcome[0]


def send_with_retries(email_cfg, subject: str, html: str, text: str, log: logging.Logger) -> bool:
    """Send with the configured retries and delays, outside any task; never raises."""
    delays = email_cfg.retry_delay_s or [0]
    for attempt in range(email_cfg.retries + 1):
        try:
            send(email_cfg, subject, html, text)
            log.info("failure mail sent: %s", subject)
            return True
        except Exception as exc:  # noqa: BLE001 - reporting a failure must not fail
            log.error("failure mail attempt %d failed: %s", attempt + 1, exc)
            if attempt < email_cfg.retries:
                time.sleep(delays[min(attempt, len(delays) - 1)])
    return False
