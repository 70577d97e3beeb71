"""Delivering alert messages: Slack (bot token + channel) and Slack-compatible incoming webhooks.

:class:`Dispatcher` gives each receiver a queue and a daemon thread. :meth:`Dispatcher.submit` never blocks and
never raises, so evaluation (and the sink or dashboard in the same process) goes on while a receiver is down; a
message that fails with a retriable error (connection refused, timeout, HTTP 408/429/5xx, Slack rate limits) is
retried, in order, with exponential backoff capped at ``max_backoff_s``, until it is delivered or the dispatcher is
closed. Permanent refusals (a wrong token, an unknown channel, HTTP 4xx) are logged and dropped.

Secrets — the bot token and the webhook URL, whose path is a credential — come from the environment only and
never appear in logs or errors: a receiver is named by its :attr:`Notifier.label` (scheme and host, or channel).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..errors import ClickstreamError, ConfigError
from ..settings import Settings, check_webhook_url

logger = logging.getLogger(__name__)


class DeliveryFailed(ClickstreamError):
    """A receiver did not take a message. ``retriable`` says whether trying again later may work."""

    def __init__(self, message: str, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class Notifier(Protocol):
    """A receiver of alert messages."""

    label: str  # for logs: never a secret

    def send(self, body: dict[str, Any]) -> None:
        """Deliver one Slack-shaped body; raise :class:`DeliveryFailed` when it was not taken."""


class WebhookNotifier:
    """POSTs the Slack body as JSON to an incoming-webhook URL (Slack, Mattermost, or any JSON receiver)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self._url = check_webhook_url(url)
        parts = urlsplit(self._url)
        self.label = f"webhook {parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.label!r})"

    def send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request = urllib.request.Request(
            self._url, data=data, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            retriable = exc.code in (408, 425, 429) or exc.code >= 500
            raise DeliveryFailed(f"{self.label} answered HTTP {exc.code}", retriable) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryFailed(f"{self.label} not reachable ({type(reason).__name__}: {reason})") from None


class SlackNotifier:
    """Posts with slack_sdk's ``WebClient.chat_postMessage`` (a bot token with the ``chat:write`` scope)."""

    _PERMANENT = frozenset(
        {
            "invalid_auth",
            "not_authed",
            "account_inactive",
            "token_revoked",
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "missing_scope",
            "invalid_blocks",
            "msg_too_long",
            "no_text",
        }
    )

    def __init__(self, token: str, channel: str, timeout_s: float = 10.0, client: Any = None) -> None:
        if not token:
            raise ConfigError("SLACK_BOT_TOKEN", "is required to post to Slack (a bot token, xoxb-...)")
        if not channel:
            raise ConfigError("CLICKSTREAM_ALERT_SLACK_CHANNEL", "is required to post to Slack (e.g. #alerts)")
        if client is None:
            from slack_sdk import WebClient

            client = WebClient(token=token, timeout=int(timeout_s))
        self._client = client
        self.channel = channel
        self.label = f"slack {channel}"

    def __repr__(self) -> str:
        return f"SlackNotifier({self.channel!r})"

    def send(self, body: dict[str, Any]) -> None:
        from slack_sdk.errors import SlackApiError

        try:
            self._client.chat_postMessage(channel=self.channel, text=body["text"], blocks=body.get("blocks"))
        except SlackApiError as exc:
            error = str(exc.response.get("error", "")) if exc.response is not None else ""
            status = getattr(exc.response, "status_code", 0) or 0
            retriable = error not in self._PERMANENT and (error == "ratelimited" or status >= 500 or not error)
            raise DeliveryFailed(f"{self.label}: Slack said {error or status}", retriable) from None
        except Exception as exc:  # connection errors of the SDK's urllib transport
            raise DeliveryFailed(f"{self.label} not reachable ({type(exc).__name__})") from None


def notifiers_from_settings(settings: Settings) -> list[Notifier]:
    """The receivers the settings name: the webhook URL and/or the Slack channel (with its bot token)."""
    out: list[Notifier] = []
    if settings.alert_webhook_url:
        out.append(WebhookNotifier(settings.alert_webhook_url))
    if settings.alert_slack_channel:
        out.append(SlackNotifier(settings.slack_bot_token, settings.alert_slack_channel))
    return out


class _Channel:
    """One receiver's queue and delivery thread."""

    def __init__(self, notifier: Notifier, backoff_s: float, max_backoff_s: float, max_queue: int) -> None:
        self.notifier = notifier
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_queue)
        self.cond = threading.Condition()
        self.busy = False
        self.closing = False
        self.delivered = self.given_up = self.dropped = self.failures = 0
        self.thread = threading.Thread(target=self._run, name=f"alert-delivery {notifier.label}", daemon=True)
        self.thread.start()

    def submit(self, body: dict[str, Any]) -> None:
        with self.cond:
            if len(self.queue) == self.queue.maxlen:
                self.dropped += 1
                logger.warning("alert queue for %s is full: dropping its oldest message", self.notifier.label)
            self.queue.append(body)
            self.cond.notify_all()

    def idle(self) -> bool:
        return not self.queue and not self.busy

    def pending(self) -> int:
        with self.cond:
            return len(self.queue) + (1 if self.busy else 0)

    def _run(self) -> None:
        attempt = 0
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if self.closing:
                    return
                body = self.queue.popleft()
                self.busy = True
            try:
                delivered = self._deliver(body, attempt)
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()
            attempt = 0 if delivered is not None else attempt + 1

    def _deliver(self, body: dict[str, Any], attempt: int) -> bool | None:
        """Try once: True delivered, False given up, None to retry after a backoff (put back at the front)."""
        try:
            self.notifier.send(body)
        except DeliveryFailed as exc:
            self.failures += 1
            if not exc.retriable:
                self.given_up += 1
                logger.error("alert not delivered, not retrying: %s", exc)
                return False
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            if attempt == 0 or (delay == self.max_backoff_s and attempt % 10 == 0):
                logger.warning("alert delivery failed (%s); retrying every %.0f s at most", exc, self.max_backoff_s)
            with self.cond:
                self.queue.appendleft(body)
                self.busy = False
                if not self.closing:
                    self.cond.wait_for(lambda: self.closing, timeout=delay)
            return None
        except Exception:  # a notifier bug must not kill the thread: log it, keep the message
            self.failures += 1
            logger.exception("alert delivery through %s raised; retrying", self.notifier.label)
            with self.cond:
                self.queue.appendleft(body)
                self.busy = False
                self.cond.wait_for(lambda: self.closing, timeout=self.max_backoff_s)
            return None
        self.delivered += 1
        if attempt:
            logger.warning("alert delivered to %s after %d failed attempts", self.notifier.label, attempt)
        return True


class Dispatcher:
    """Background delivery to every receiver, with retries; see the module docstring.

    Args:
        notifiers: the receivers (none: messages are dropped quietly).
        backoff_s: the first retry's delay; it doubles per failed attempt ...
        max_backoff_s: ... up to this.
        max_queue: messages kept per receiver while it is down; the oldest go first when full.
    """

    def __init__(
        self,
        notifiers: Sequence[Notifier],
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_queue: int = 1000,
    ) -> None:
        self._channels = [_Channel(n, backoff_s, max_backoff_s, max_queue) for n in notifiers]

    @property
    def labels(self) -> list[str]:
        return [c.notifier.label for c in self._channels]

    def submit(self, body: dict[str, Any]) -> None:
        """Queue ``body`` for every receiver; returns at once."""
        for channel in self._channels:
            channel.submit(body)

    def pending(self) -> int:
        """Messages not yet delivered (summed over receivers)."""
        return sum(c.pending() for c in self._channels)

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            c.notifier.label: {
                "delivered": c.delivered,
                "pending": c.pending(),
                "failures": c.failures,
                "given_up": c.given_up,
                "dropped": c.dropped,
            }
            for c in self._channels
        }

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every queued message to be delivered (or given up); True if none is left."""
        deadline = time.monotonic() + timeout_s
        for c in self._channels:
            with c.cond:
                if not c.cond.wait_for(c.idle, max(0.0, deadline - time.monotonic())):
                    return False
        return True

    def close(self, timeout_s: float = 0.0) -> int:
        """Flush for up to ``timeout_s``, then stop the threads; returns the messages left undelivered."""
        self.flush(timeout_s)
        left = self.pending()
        for c in self._channels:
            with c.cond:
                c.closing = True
                c.cond.notify_all()
        for c in self._channels:
            c.thread.join(timeout=5)
        if left:
            logger.warning("%d alert message(s) not delivered: %s", left, ", ".join(self.labels))
        return left
