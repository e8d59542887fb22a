"""AWS CloudWatch alarms: through SNS (signed envelope or raw delivery) and
EventBridge "CloudWatch Alarm State Change" events.

Three shapes arrive at ``POST /webhooks/cloudwatch``:

* an SNS envelope (``Type``, ``Signature``…), verified by its signature and
  its topic against the allow-list; subscription handshakes are answered
  here too;
* a bare alarm JSON (SNS raw message delivery), which carries no signature
  and is therefore accepted only on ``/webhooks/cloudwatch/<token>`` when
  raw delivery is enabled;
* an EventBridge event (``detail-type``), sent by an API destination whose
  connection adds the configured API-key header.

Every shape becomes the same alert (see :mod:`relay.sources.cloudwatch_alarm`
for the mapping), keyed by the alarm ARN, so an alarm reported on two paths
is one problem.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from relay.alert import Notification
from relay.config import CloudWatchSource as CloudWatchConfig
from relay.config import Config
from relay.errors import AuthError, ConfigError, ForbiddenError, InputError
from relay.sources.auth import same
from relay.sources.base import Inbound, Source, parse_json_object
from relay.sources.cloudwatch_alarm import (
    AlarmMapper,
    alarm_from_event,
    alarm_from_message,
    looks_like_alarm,
)
from relay.sources.sns import (
    Fetch,
    SnsVerifier,
    UpstreamUnavailable,
    http_fetch,
    url_problem,
)

log = logging.getLogger(__name__)

ENVELOPE_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
# fields every envelope must have before anything else is looked at
_REQUIRED = {
    "Notification": ("Type", "MessageId", "TopicArn", "Message", "Timestamp"),
    "SubscriptionConfirmation": (
        "Type",
        "MessageId",
        "TopicArn",
        "Message",
        "Timestamp",
        "Token",
        "SubscribeURL",
    ),
}
_REQUIRED["UnsubscribeConfirmation"] = _REQUIRED["SubscriptionConfirmation"]
_SIGNATURE_FIELDS = ("SignatureVersion", "Signature", "SigningCertURL")
ALARM_STATE_CHANGE = "CloudWatch Alarm State Change"
# a raw-delivery token travels in a URL path: long enough not to be guessed,
# and only characters that need no escaping
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,}")
_SUBSCRIPTION_ARN = re.compile(r"<SubscriptionArn>([^<]{1,512})</SubscriptionArn>")


def topic_matcher(patterns: list[str]) -> re.Pattern[str] | None:
    """One regex for the topic allow-list, or None for "any topic".

    ``*`` matches any run of characters within one ARN field (never a
    ``:``), so ``arn:aws:sns:*:123456789012:alerts-*`` allows every region
    of one account; a lone ``*`` allows every topic.
    """
    if not patterns:
        return None
    parts = []
    for pattern in patterns:
        if pattern.strip() == "*":
            parts.append(".*")
        else:
            parts.append("[^:]*".join(re.escape(p) for p in pattern.strip().split("*")))
    return re.compile("(?:" + "|".join(parts) + ")")


class CloudWatchSource(Source):
    """The ``cloudwatch`` webhook source. Stateless between requests apart
    from the verifier's certificate cache, so safe to share between threads.

    ``verifier`` and ``fetch`` (the GET used for certificates and for
    subscription confirmations) are injectable for tests; by default the
    verifier follows the configuration and ``fetch`` uses requests.
    """

    name = "cloudwatch"

    def __init__(
        self,
        config: Config,
        *,
        verifier: SnsVerifier | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        self.preview = False
        self.config: CloudWatchConfig = config.sources.cloudwatch
        cfg = self.config
        self._fetch: Callable[[str], bytes] = fetch or http_fetch
        self.verifier = verifier or SnsVerifier(
            cfg.cert_host_pattern, cfg.cert_dir or None, fetch=fetch
        )
        self._topics = topic_matcher(cfg.topics)
        self.mapper = AlarmMapper(cfg)
        self._check_config()

    def warnings(self) -> dict[str, str]:
        if self._topics is None and self.config.enabled:
            return {
                "cloudwatch.topics_unrestricted": "sources.cloudwatch.topics is "
                "empty: signed messages from any SNS topic are accepted"
            }
        return {}

    @classmethod
    def for_preview(cls, config: Config) -> CloudWatchSource:
        """A source for ``relay preview``, which parses a saved payload with
        no side effect and no request around it: SNS signatures are not
        verified, raw and EventBridge bodies need no token or key, and
        nothing is fetched (a subscription confirmation is reported, not
        confirmed). Never serve webhooks with it; the server builds its
        source with the constructor, which has no such mode."""

        def no_fetch(url: str) -> bytes:
            raise UpstreamUnavailable("relay preview fetches nothing")

        source = cls(config, verifier=_UnverifiedPreview(), fetch=no_fetch)
        source.preview = True
        return source

    def _check_config(self) -> None:
        raw, eventbridge = self.config.raw_delivery, self.config.eventbridge
        if raw.enabled and not _TOKEN.fullmatch(raw.token):
            # the message describes the token without echoing it
            raise ConfigError(
                "sources.cloudwatch.raw_delivery.token: expected at least 16 "
                "characters of A-Z a-z 0-9 . _ ~ - when raw delivery is enabled; "
                f"got {len(raw.token)} characters"
            )
        if eventbridge.enabled and not eventbridge.api_key:
            raise ConfigError(
                "sources.cloudwatch.eventbridge.api_key: expected an API key when "
                "EventBridge delivery is enabled; got nothing"
            )
        if eventbridge.enabled and not eventbridge.api_key_header.strip():
            raise ConfigError(
                "sources.cloudwatch.eventbridge.api_key_header: expected a header "
                "name; got nothing"
            )

    # authentication -------------------------------------------------------

    def authenticate(self, request: Inbound) -> None:
        """Check what can be checked before the body is read: the raw
        delivery path token and the EventBridge API key. SNS signatures are
        checked in :meth:`parse`, which needs the body."""
        if request.subpath.strip("/") or _is_raw_header(request):
            self._check_raw(request)
        header = self.config.eventbridge.api_key_header.lower()
        if self.config.eventbridge.enabled and request.header(header):
            self._check_eventbridge(request)

    def _raw_authorised(self, request: Inbound) -> bool:
        if not request.subpath.strip("/") or self.preview:
            return False
        self._check_raw(request)
        return True

    def _check_raw(self, request: Inbound) -> None:
        if self.preview:
            return
        raw = self.config.raw_delivery
        if not raw.enabled:
            raise ForbiddenError(
                "SNS raw message delivery is disabled "
                "(sources.cloudwatch.raw_delivery.enabled); a bare alarm without "
                "a signed SNS envelope is refused"
            )
        token = request.subpath.strip("/")
        if not token:
            raise AuthError(
                "SNS raw message delivery is accepted only on "
                "/webhooks/cloudwatch/<token>; got no token"
            )
        if not same(token, raw.token):
            raise AuthError("invalid raw delivery token")

    def _check_eventbridge(self, request: Inbound) -> None:
        if self.preview:
            return
        eventbridge = self.config.eventbridge
        if not eventbridge.enabled:
            raise ForbiddenError(
                "EventBridge delivery is disabled (sources.cloudwatch.eventbridge."
                "enabled); the event is refused"
            )
        given = request.header(eventbridge.api_key_header.lower())
        if not given:
            raise AuthError(
                f"EventBridge events must carry the {eventbridge.api_key_header} "
                "header; got none"
            )
        if not same(given, eventbridge.api_key):
            raise AuthError("invalid EventBridge API key")

    # parsing -------------------------------------------------------------

    def parse(self, request: Inbound) -> Notification:
        """Turn an SNS envelope, a raw-delivered alarm or an EventBridge
        event into a Notification; see the module docstring."""
        raw_ok = self._raw_authorised(request)
        try:
            data = parse_json_object(request.body, "SNS message or EventBridge event")
        except InputError:
            if not raw_ok:
                raise
            # an authorised raw delivery of something that is not JSON is a
            # message published to the topic by someone else: acknowledge it,
            # since SNS drops a 4xx and the answer changes nothing
            return self._not_alarm(request.header("x-amz-sns-message-id") or None)

        if "detail-type" in data:
            self._check_eventbridge(request)
            return self._parse_event(data)
        if "Type" in data and ("MessageId" in data or "Signature" in data):
            return self._parse_envelope(data)
        if not raw_ok:
            self._check_raw(request)
        return self._parse_raw(data, request)

    def _parse_envelope(self, envelope: dict[str, Any]) -> Notification:
        kind = envelope.get("Type")
        if kind not in ENVELOPE_TYPES:
            raise InputError(
                f"SNS Type must be one of {', '.join(ENVELOPE_TYPES)}; got {kind!r}"
            )
        missing = [name for name in _REQUIRED[kind] if name not in envelope]
        if missing:
            raise InputError(
                f"SNS {kind} is missing {', '.join(missing)}; expected "
                f"{', '.join(_REQUIRED[kind])}"
            )
        for name in _REQUIRED[kind]:
            if not isinstance(envelope[name], str):
                raise InputError(
                    f"SNS {kind} field {name} must be a string; "
                    f"got {type(envelope[name]).__name__}"
                )
        topic, message_id = envelope["TopicArn"], envelope["MessageId"]

        # verify before acting on anything the message says
        self._check_topic(topic, message_id)
        unsigned = [name for name in _SIGNATURE_FIELDS if not envelope.get(name)]
        try:
            if unsigned and not self.preview:
                raise ForbiddenError(f"unsigned SNS message: no {', '.join(unsigned)}")
            self.verifier.verify(envelope)
        except ForbiddenError as e:
            log.warning(
                "sns.signature_invalid",
                extra={"topic_arn": topic, "message_id": message_id, "reason": str(e)},
            )
            raise

        if kind == "SubscriptionConfirmation":
            return self._confirm(envelope)
        if kind == "UnsubscribeConfirmation":
            log.warning(
                "sns.unsubscribed",
                extra={"topic_arn": topic, "message_id": message_id},
            )
            return Notification(
                source="cloudwatch",
                message_id=message_id,
                note="unsubscribe confirmation acknowledged; nothing was fetched",
                raw=envelope,
            )
        return self._notification(envelope)

    def _check_topic(self, topic: str, message_id: str | None) -> None:
        if self._topics is None or self._topics.fullmatch(topic):
            return
        log.warning(
            "sns.topic_refused", extra={"topic_arn": topic, "message_id": message_id}
        )
        raise ForbiddenError(f"SNS topic {topic!r} is not in sources.cloudwatch.topics")

    def _confirm(self, envelope: dict[str, Any]) -> Notification:
        topic, url = envelope["TopicArn"], envelope["SubscribeURL"]
        message_id = envelope["MessageId"]
        if not self.config.auto_confirm:
            log.warning(
                "sns.subscription_pending",
                extra={"topic_arn": topic, "subscribe_url": url},
            )
            return Notification(
                source="cloudwatch",
                message_id=message_id,
                note="subscription pending: auto_confirm is off; open the "
                "SubscribeURL logged as sns.subscription_pending to confirm it",
                raw=envelope,
            )

        problem = url_problem(url, self.verifier.host_pattern)
        if problem is None and "ConfirmSubscription" not in parse_qs(
            urlsplit(url).query
        ).get("Action", []):
            problem = "the URL is not a ConfirmSubscription action"
        if problem is not None:
            log.warning(
                "sns.subscribe_url_refused",
                extra={"topic_arn": topic, "message_id": message_id, "reason": problem},
            )
            raise ForbiddenError(f"SubscribeURL refused: {problem}")
        if self.preview:
            return Notification(
                source="cloudwatch",
                message_id=message_id,
                note="subscription confirmation (preview: the SubscribeURL passed "
                "its checks and was not fetched)",
                raw=envelope,
            )

        try:
            answer = self._fetch(url)
        except UpstreamUnavailable as e:
            log.error(
                "sns.subscription_confirm_failed",
                extra={"topic_arn": topic, "reason": str(e)},
            )
            raise
        found = _SUBSCRIPTION_ARN.search(answer.decode("utf-8", "replace"))
        log.info(
            "sns.subscription_confirmed",
            extra={
                "topic_arn": topic,
                "subscription_arn": found.group(1) if found else "",
            },
        )
        return Notification(
            source="cloudwatch",
            message_id=message_id,
            note="subscription confirmed",
            raw=envelope,
        )

    def _notification(self, envelope: dict[str, Any]) -> Notification:
        message_id, text = envelope["MessageId"], envelope["Message"]
        try:
            alarm = json.loads(text)
        except json.JSONDecodeError as e:
            if looks_like_alarm(text):
                raise InputError(
                    "SNS Message looks like a CloudWatch alarm but is not valid "
                    f"JSON ({e.msg} at line {e.lineno} column {e.colno})"
                ) from None
            return self._not_alarm(message_id, envelope)
        if not isinstance(alarm, dict) or "AlarmName" not in alarm:
            return self._not_alarm(message_id, envelope)

        facts = alarm_from_message(alarm, topic_arn=envelope["TopicArn"])
        return self.mapper.notification(
            facts, message_id=message_id, raw=envelope, alarm=alarm
        )

    def _parse_raw(self, alarm: dict[str, Any], request: Inbound) -> Notification:
        message_id = request.header("x-amz-sns-message-id") or None
        topic = request.header("x-amz-sns-topic-arn")
        # the topic header is not signed (nothing is, in raw delivery); the
        # path token is the credential, the allow-list a consistency check
        if topic:
            self._check_topic(topic, message_id)
        if "AlarmName" not in alarm:
            return self._not_alarm(message_id, alarm)
        facts = alarm_from_message(alarm, topic_arn=topic)
        return self.mapper.notification(
            facts, message_id=message_id, raw=alarm, alarm=alarm
        )

    def _parse_event(self, event: dict[str, Any]) -> Notification:
        kind = event.get("detail-type")
        event_id = event.get("id") if isinstance(event.get("id"), str) else None
        if kind != ALARM_STATE_CHANGE:
            log.info(
                "cloudwatch.event_ignored",
                extra={"detail_type": str(kind), "event_id": event_id},
            )
            return Notification(
                source="cloudwatch",
                message_id=event_id,
                note=f"EventBridge event {kind!r} ignored; only "
                f"{ALARM_STATE_CHANGE!r} opens tickets",
                raw=event,
            )
        if event_id is None:
            raise InputError("EventBridge event has no string id")
        facts = alarm_from_event(event)
        return self.mapper.notification(
            facts, message_id=event_id, raw=event, alarm=event
        )

    def _not_alarm(
        self, message_id: str | None, raw: dict[str, Any] | None = None
    ) -> Notification:
        log.info("cloudwatch.not_alarm", extra={"message_id": message_id})
        return Notification(
            source="cloudwatch",
            message_id=message_id,
            note="not a CloudWatch alarm",
            raw=raw or {},
        )


def _is_raw_header(request: Inbound) -> bool:
    return request.header("x-amz-sns-rawdelivery").strip().lower() == "true"


class _UnverifiedPreview(SnsVerifier):
    """Accepts every signature; used only by :meth:`CloudWatchSource.for_preview`."""

    def verify(self, message: Mapping[str, Any]) -> None:
        return None
