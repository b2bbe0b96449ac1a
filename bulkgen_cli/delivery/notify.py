"""Notifications when a bulk job ends (design.md, "The outbox and at-least-once delivery"): webhook, email, and --on-complete.

The job's end and its outbox are written in one atomic step by the store;
`Notifier.deliver` works through an outbox: it fills in the event once (so every
channel gets the same one), then takes each due step, sends, and records the
result. A step recorded as sent is never sent again; one whose sender died is
taken back when its lock expires, seconds after its send's deadline: delivery
is at least once, with one Idempotency-Key per event. A receiver that stays
down is recorded on the job and never fails the job or the processor. Nothing
read from the store is run: the on-complete command is the processor's own
setting.

httpx (about 80 ms of a cold start, with `held_http`, its connections held to a
send's deadline), smtplib, ssl and email are imported in the function that
sends, not with the module: the commands that deliver an end at
once (`cancel`, `item cancel`, `doctor --fix`) load this module, and most ends
notify neither a webhook nor an address.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from bulkgen_cli import __version__
from bulkgen_cli.core.channels import RETRY_DELAYS, SmtpSettings, mask_channel
from bulkgen_cli.core.model import (
    BulkJob,
    BulkStatus,
    StepState,
    iso,
    later,
    utcnow,
)
from bulkgen_cli.delivery.deadline import Deadline
from bulkgen_cli.delivery.netpolicy import Policy, Refused, check_email, check_webhook, pinned_request
from bulkgen_cli.store.base import Store, step_claimable

if TYPE_CHECKING:  # imported where used (see above)
    from email.message import EmailMessage

#: Waits after the 1st, 2nd and 3rd failed try: 4 tries over about a minute.
#: How often a busy processor looks for notifications left pending by others (seconds).
SCAN_EVERY = 5.0
#: A webhook's and an e-mail's whole send, each a deadline (`Deadline`): resolving the name, connecting,
#: TLS, every write and every read together, not each of them.
WEBHOOK_TIMEOUT = 10.0
SMTP_TIMEOUT = 30.0
#: The on-complete hook's limit; the hook is claimed once (`claim_hook`), never under a step's lock.
HOOK_TIMEOUT = 300.0
#: What a step's lock adds to its channel's send deadline: the clock reads and the store write around the
#: send, and the clocks' disagreement between machines sharing a store.
LOCK_MARGIN = 5.0
#: The longest a sender holds a step (e-mail's); if it dies, another takes the step back after its lock.
LOCK_SECONDS = max(WEBHOOK_TIMEOUT, SMTP_TIMEOUT) + LOCK_MARGIN
#: An on-complete hook is run for ends at most this old (a processor started
#: later does not replay the whole history).
HOOK_WINDOW = dt.timedelta(hours=24)


# -- channels -------------------------------------------------------------------


def send_timeout(channel: str) -> float:
    """The whole time one send on `channel` may take (a deadline it is held to)."""
    return SMTP_TIMEOUT if channel.startswith("email:") else WEBHOOK_TIMEOUT


def lock_seconds(channel: str) -> float:
    """How long a step on `channel` is taken for: past its send's deadline, so no send outlives its lock."""
    return send_timeout(channel) + LOCK_MARGIN


# -- the event ----------------------------------------------------------------------


def build_event(bulk: BulkJob, event_id: str, kind: str) -> dict[str, Any]:
    started = bulk.started_at or bulk.created_at
    duration = None
    if started and bulk.completed_at:
        duration = round((bulk.completed_at - started).total_seconds(), 3)
    return {
        "event": kind,
        "event_id": event_id,
        "bulk_job_id": bulk.id,
        "name": bulk.name,
        "userId": bulk.userId,
        "mode": bulk.mode,
        "status": bulk.status,
        "total_items": bulk.total_items,
        "completed_items": bulk.completed_items,
        "failed_items": bulk.failed_items,
        "cancelled_items": bulk.cancelled_items,
        "started_at": iso(bulk.started_at),
        "completed_at": iso(bulk.completed_at),
        "duration_seconds": duration,
        "error_summary": list(bulk.error_summary),
        "results_command": f"bulkgen results {bulk.id} --out articles/",
    }


def email_message(event: dict[str, Any], sender: str, to: str) -> EmailMessage:
    from email.message import EmailMessage

    failed = f", {event['failed_items']} failed" if event["failed_items"] else ""
    message = EmailMessage()
    message["Subject"] = (f"bulkgen: {event['name']} {event['status']}: "
                          f"{event['completed_items']} of {event['total_items']} completed{failed}")
    message["From"] = sender
    message["To"] = to
    lines = [
        f"Bulk job {event['bulk_job_id']} ({event['name']}) is {event['status']}.",
        "",
        f"Completed: {event['completed_items']} of {event['total_items']}",
        f"Failed:    {event['failed_items']}",
        f"Cancelled: {event['cancelled_items']}",
        f"Duration:  {event['duration_seconds']} s" if event["duration_seconds"] is not None else "",
    ]
    if event["error_summary"]:
        lines += ["", "Failures:"] + [f"  {line}" for line in event["error_summary"]]
    lines += ["", "Get the articles:", f"  {event['results_command']}", ""]
    message.set_content("\n".join(line for line in lines if line is not None))
    return message


def send_email(account: SmtpSettings, message: EmailMessage, deadline: Deadline | None = None) -> None:
    """Send `message`, the whole exchange within `deadline` (SMTP_TIMEOUT from now by default)."""
    import smtplib
    import ssl

    deadline = deadline or Deadline(SMTP_TIMEOUT)
    context = ssl.create_default_context()
    smtp = (smtplib.SMTP_SSL(timeout=SMTP_TIMEOUT, context=context) if account.scheme == "smtps"
            else smtplib.SMTP(timeout=SMTP_TIMEOUT))

    def connected(host: str, port: int, timeout: float) -> Any:  # smtplib's own, within the deadline
        sock = deadline.connect(host, port, smtp.source_address)
        return context.wrap_socket(sock, server_hostname=host) if account.scheme == "smtps" else sock

    smtp._get_socket = connected  # type: ignore[method-assign]
    smtp._host = account.host  # the name STARTTLS checks the certificate against, as SMTP(host) sets it
    with deadline.cutting(lambda: smtp.sock):
        smtp.connect(account.host, account.port)
        with smtp:
            smtp.ehlo()
            if account.user and account.scheme == "smtp":
                if not smtp.has_extn("starttls"):
                    raise RuntimeError("the SMTP server offers no STARTTLS; the password is not sent in clear")
                smtp.starttls(context=context)
                smtp.ehlo()
            if account.user:
                smtp.login(account.user, account.password or "")
            smtp.send_message(message)


# -- delivery ------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One try at one channel (or the on-complete hook), for the user to see."""

    bulk_id: str
    channel: str
    ok: bool
    error: str | None = None
    final: bool = True


@dataclass
class AtOnce:
    """Delivers the end a user's action recorded, at once (ops.control.Notifies): whoever records an end
    delivers it; a processor retries what fails and sends what this process cannot (`skip_unconfigured`).
    The front end passes how to read its SMTP settings and retry delays: they are read when an end is to be
    delivered, so an action that ends nothing reads neither."""

    store: Store
    smtp: Callable[[], SmtpSettings | None]
    retry_delays: Callable[[], tuple[float, ...]]
    on_delivery: Callable[[Delivery], None] | None = None

    def deliver(self, bulk: BulkJob) -> None:
        Notifier(self.store, f"cancel:{os.getpid()}", self.smtp(), skip_unconfigured=True,
                 on_delivery=self.on_delivery, retry_delays=self.retry_delays()).deliver(bulk)


class Notifier:
    def __init__(
        self,
        store: Store,
        owner: str,
        smtp: SmtpSettings | None = None,
        on_complete: str | None = None,
        skip_unconfigured: bool = False,
        on_delivery: Callable[[Delivery], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ):
        self.store = store
        self.retry_delays = retry_delays
        self.owner = owner
        self.smtp = smtp
        self.on_complete = on_complete
        #: a command (cancel) leaves email to a processor when it has no SMTP itself
        self.skip_unconfigured = skip_unconfigured
        self.on_delivery = on_delivery or (lambda d: None)
        self.clock = clock
        self._next_scan = 0.0

    def _can(self, channel: str) -> bool:
        return not (channel.startswith("email:") and self.smtp is None and self.skip_unconfigured)

    def deliver(self, bulk: BulkJob) -> None:
        """Send every due step of the job's outbox once, and run the hook if it is ours."""
        outbox = bulk.outbox
        if not outbox:
            return
        event = outbox["event"] or self._fill(bulk)
        if event is None:
            return  # another end replaced this one meanwhile
        for index, step in enumerate(outbox["steps"]):
            now = self.clock()  # each step's own: its lock starts when it is taken, not when the first was
            if not self._can(step["channel"]) or not step_claimable(step, now):
                continue
            deadline = Deadline(send_timeout(step["channel"]))  # from `now`: the store's write counts too
            if not self.store.claim_step(bulk.id, outbox["event_id"], index, self.owner, now,
                                         lock_seconds(step["channel"])):
                continue
            error = self._send(step["channel"], event, bulk.notify_policy, deadline)
            tries = step["attempts"] + 1
            retry_at = None
            if error is not None and tries <= len(self.retry_delays):
                retry_at = later(self.clock(), self.retry_delays[tries - 1])
            self.store.finish_step(bulk.id, outbox["event_id"], index, self.owner, self.clock(), error, retry_at)
            self.on_delivery(Delivery(bulk.id, mask_channel(step["channel"]), error is None, error,
                                      final=error is None or retry_at is None))
        self._hook(bulk, event)

    def _fill(self, bulk: BulkJob) -> dict[str, Any] | None:
        """Build the event from the ended job, once; every deliverer then sends that one."""
        assert bulk.outbox is not None
        now = self.clock()
        if bulk.status == BulkStatus.cancelled.value:
            self.store.cancel_bulk(bulk.id, now)  # idempotent: finishes a cancel that died half-way
        self.store.refresh_counters(bulk.id, now)
        fresh = self.store.get_bulk(bulk.id)
        if fresh is None or not fresh.outbox or fresh.outbox["event_id"] != bulk.outbox["event_id"]:
            return None
        self.store.set_event(bulk.id, bulk.outbox["event_id"],
                             build_event(fresh, bulk.outbox["event_id"], bulk.outbox["kind"]))
        stored = self.store.get_bulk(bulk.id)
        return None if stored is None or not stored.outbox else stored.outbox["event"]

    def scan(self, force: bool = False) -> None:
        """`deliver_due`, at most once per SCAN_EVERY seconds unless forced (a busy processor's sweep)."""
        if not force and time.monotonic() < self._next_scan:
            return
        self._next_scan = time.monotonic() + SCAN_EVERY
        self.deliver_due()

    def deliver_due(self) -> None:
        """Work through every open outbox, and the hooks this processor owes."""
        for bulk in self.store.open_outboxes():
            self.deliver(bulk)
        if self.on_complete:
            for bulk in self.store.pending_hooks(self.clock() - HOOK_WINDOW):
                self.deliver(bulk)

    def next_due(self) -> dt.datetime | None:
        """When the earliest step this notifier can send becomes due, or None."""
        due = []
        for bulk in self.store.open_outboxes():
            for step in (bulk.outbox or {}).get("steps", []):
                if not self._can(step["channel"]):
                    continue
                if step["state"] == StepState.pending.value:
                    due.append(step["next_at"])
                elif step["state"] == StepState.sending.value:
                    due.append(step["lock_until"])
        return dt.datetime.fromisoformat(min(due)) if due else None

    # -- channels --------------------------------------------------------------

    def _send(self, channel: str, event: dict[str, Any], policy: dict[str, Any] | None = None,
              deadline: Deadline | None = None) -> str | None:
        """Send one channel within `deadline` (which the step's lock outlasts); None when delivered, else a
        one-line reason.

        A job submitted over HTTP carries a policy: its targets are checked again
        now (netpolicy), and a webhook connects to the address just checked.
        """
        kind, _, target = channel.partition(":")
        deadline = deadline or Deadline(send_timeout(channel))
        if deadline.expired():
            return f"not sent: the store took more than the send's {deadline.seconds:g} s to hand the step over"
        try:
            if kind == "webhook":
                return self._webhook(target, event, None if policy is None else Policy.from_record(policy),
                                     deadline)
            if kind == "email":
                if policy is not None:
                    check_email(target, Policy.from_record(policy))
                if self.smtp is None:
                    return "no BULKGEN_SMTP_URL is set on the processor that delivered it"
                send_email(self.smtp, email_message(event, self.smtp.sender, target), deadline)
                return None
            return f"unknown channel kind {kind!r}"
        except Refused as exc:
            return f"refused: {exc}"
        except Exception as exc:  # noqa: BLE001  a channel's failure is recorded, never raised
            return self._scrub(f"{type(exc).__name__}: {exc}")[:300]

    def _webhook(self, url: str, event: dict[str, Any], policy: Any = None,
                 deadline: Deadline | None = None) -> str | None:
        import httpx

        from bulkgen_cli.delivery.held_http import within_deadline

        deadline = deadline or Deadline(WEBHOOK_TIMEOUT)
        if urlsplit(url).scheme not in ("http", "https"):
            return "not an http(s) URL"
        headers = {"User-Agent": f"bulkgen/{__version__}", "X-Bulkgen-Event": event["event"],
                   "Idempotency-Key": event["event_id"]}
        extensions: dict[str, Any] = {}
        if policy is not None:  # connect to the address just checked: no window for DNS rebinding
            url, host, extensions = pinned_request(url, deadline.call(check_webhook, url, policy)[0])
            headers.update(host)
        with httpx.Client(timeout=WEBHOOK_TIMEOUT, follow_redirects=False) as client:
            within_deadline(client, deadline)
            response = client.post(url, json=event, headers=headers, extensions=extensions)
        if 200 <= response.status_code < 300:
            return None
        body = " ".join(response.text.split())[:120]
        return f"HTTP {response.status_code}: {body}"

    def _scrub(self, text: str) -> str:
        if self.smtp is not None and self.smtp.password:
            text = text.replace(self.smtp.password, "***")
        return text

    def _hook(self, bulk: BulkJob, event: dict[str, Any]) -> None:
        if not self.on_complete or not bulk.outbox:
            return
        if not self.store.claim_hook(bulk.id, bulk.outbox["event_id"]):
            return
        env = {**os.environ, "BULKGEN_BULK_ID": bulk.id, "BULKGEN_STATUS": bulk.status,
               "BULKGEN_EVENT": event["event"]}
        try:
            done = subprocess.run(self.on_complete, shell=True, input=json.dumps(event), text=True,
                                  env=env, capture_output=True, timeout=HOOK_TIMEOUT)
            error = None if done.returncode == 0 else (
                f"exited {done.returncode}: {' '.join(done.stderr.split())[:200]}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            error = str(exc)[:200]
        self.on_delivery(Delivery(bulk.id, "on-complete", error is None, error))
