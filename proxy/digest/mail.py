"""The digest as an e-mail: plain text and HTML alternatives, sent over SMTP (stdlib).

``smtplib`` blocks, so the sending runs in a worker thread; STARTTLS verifies the server's
certificate against the system's CAs and ``digest.smtp.ca_file``.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from proxy.digest import render
from proxy.digest.content import Digest
from proxy.job_settings import SmtpSettings

log = logging.getLogger(__name__)

SMTP_ERRORS = (smtplib.SMTPException, OSError)


def digest_message(digest: Digest, smtp: SmtpSettings) -> EmailMessage:
    """The message: ``text/plain`` first, ``text/html`` as its alternative."""
    message = EmailMessage()
    message["Subject"] = render.subject(digest)
    message["From"] = smtp.sender
    message["To"] = ", ".join(smtp.to)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=smtp.sender.rpartition("@")[2] or None)
    message.set_content(render.text(digest))
    message.add_alternative(render.html(digest), subtype="html")
    return message


def send_message(message: EmailMessage, smtp: SmtpSettings) -> None:
    """Deliver ``message`` through the configured server (blocking)."""
    with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
        client.ehlo()
        if smtp.starttls:
            context = ssl.create_default_context(cafile=smtp.ca_file)
            client.starttls(context=context)
            client.ehlo()
        if smtp.user is not None:
            client.login(smtp.user, smtp.password or "")
        client.send_message(message)


async def mail_digest(digest: Digest, smtp: SmtpSettings) -> bool:
    """Send the digest by mail; False (logged) when the server refused it or was not there."""
    message = digest_message(digest, smtp)
    try:
        await asyncio.to_thread(send_message, message, smtp)
    except SMTP_ERRORS as exc:
        log.error(
            "digest for %s not mailed via %s:%d: %s: %s",
            digest.day, smtp.host, smtp.port, type(exc).__name__, exc,
        )  # fmt: skip
        return False
    log.info("digest for %s mailed to %s", digest.day, ", ".join(smtp.to))
    return True
