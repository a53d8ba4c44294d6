"""Wire encodings of outputs: CloudEvents 1.0 (structured JSON) and dead-letter records.

Output ids are derived from what caused the event (``cloud_event_id``), so a replay after a
crash produces the same id and subscribers can drop duplicates by id.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

import orjson

from domain.events import Rejection
from domain.timeparse import format_event_time

MAX_RAW_CHARS = 64 * 1024
SOURCE_PREFIX = "omnistream"

#: The CloudEvents Kafka protocol binding tells structured from binary mode by the message's
#: ``content-type`` header alone: without it a receiver reads the value as the *data* of a
#: binary-mode event and looks for ``ce_*`` headers that are not there (the Java SDK and
#: Knative then reject the message). Every CloudEvent output carries this header.
CLOUDEVENT_CONTENT_TYPE = "application/cloudevents+json"
#: The headers of one structured-mode CloudEvent message, typed as confluent-kafka's
#: ``produce`` takes them; one shared list, passed as is to every produce call.
CLOUDEVENT_HEADERS: list[tuple[str, str | bytes | None]] = [
    ("content-type", CLOUDEVENT_CONTENT_TYPE.encode("ascii"))
]


class OutMessage(NamedTuple):
    """One message for an output topic, as ``connectors.operators.output`` publishes it.

    A plain pair rather than Bytewax's ``KafkaSinkMessage`` (a frozen dataclass with a
    headers list): the flows publish one or more per input event, and building those cost
    about 4 µs each, a tenth of identity_stitch's time."""

    key: bytes | None
    value: bytes
    #: Full topic name, when one sink writes several topics (else the sink's own topic).
    topic: str | None = None


#: Values of these keys are PII and are masked wherever they appear in dead letters, whatever
#: the quoting: JSON, JSON escaped inside a string, Python reprs, key=value text.
PII_KEYS = ("phone", "email", "mobile", "phone_number", "tel")
_PII_VALUE = re.compile(
    r"((?<![A-Za-z0-9_])(?:" + "|".join(PII_KEYS) + r")(?![A-Za-z0-9_])(?:\\?[\"'])?\s*[:=]\s*"
    r"(?:\\?[\"'])?)([^\"'\\,;}\]\s&]{1,320})",
    re.IGNORECASE,
)
#: Bounded repetitions and a token-start look-behind keep masking linear on hostile input.
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}"
)
#: Digit runs written like phone numbers: with a +/00 country prefix, with separators
#: (138-0013-8000, 138 0013 8000), or a bare 11-digit mobile number. Epoch timestamps
#: (13 plain digits) and plain ids are kept.
_PHONE_LIKE = re.compile(
    r"(?<![\d])(?:\+|00)\d[\d ().-]{6,20}\d(?![\d])"
    r"|(?<![\d-])\d{2,4}([ .-])\d{2,4}(?:\1\d{2,4}){1,3}(?![\d-])"
    r"|(?<!\d)1[3-9]\d{9}(?!\d)"
)
MASK = "***"
_TRAILING_DIGITS = re.compile(r"[\d +-]{5,}$")


def mask_pii(text: str) -> str:
    """Mask PII in a possibly broken JSON text: values of PII keys, e-mails, phone numbers."""
    text = _PII_VALUE.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _EMAIL.sub(MASK, text)
    return _PHONE_LIKE.sub(_mask_if_phone, text)


def _mask_if_phone(match: re.Match[str]) -> str:
    """Phone numbers have 9+ digits; shorter groups (dates, times) are kept."""
    digits = sum(ch.isdigit() for ch in match.group(0))
    return MASK if digits >= 9 else match.group(0)


def deadletter_record(rejection: Rejection, flow: str = "") -> tuple[bytes | None, bytes]:
    """Key and value of a dead-letter message (plain JSON, CONTRACT §3).

    ``flow`` (an optional field) names the flow that refused the message: an input read by
    several flows is refused by each of them, and an operator wants to tell them apart.
    """
    # Cut before masking (masking cost grows with length), and again after it; a digit run
    # left at the cut could be the start of a phone number, so it is masked too.
    text = rejection.raw[: 2 * MAX_RAW_CHARS].decode("utf-8", errors="replace")
    masked = mask_pii(text)
    if len(masked) > MAX_RAW_CHARS or len(rejection.raw) > 2 * MAX_RAW_CHARS:
        masked = _TRAILING_DIGITS.sub(MASK, masked[:MAX_RAW_CHARS])[:MAX_RAW_CHARS]
    value = {
        "topic": rejection.origin.topic,
        "partition": rejection.origin.partition,
        "offset": rejection.origin.offset,
        "reason": rejection.reason,
        "error": mask_pii(rejection.error)[:1024],
        "raw": masked,
    }
    if flow:
        value["flow"] = flow
    return rejection.origin.key, orjson.dumps(value)


def cloud_event_id(kind: str, *causes: str) -> str:
    """A deterministic id: the same causes always give the same id (replay-safe)."""
    digest = hashlib.sha256("\x1f".join((kind, *causes)).encode("utf-8")).hexdigest()
    return digest[:32]


def cloud_event(
    *,
    event_type: str,
    source: str,
    subject: str,
    event_id: str,
    time_ms: int,
    data: dict[str, Any],
) -> bytes:
    """A CloudEvents 1.0 structured-mode JSON document (the message value; publish it with
    ``CLOUDEVENT_HEADERS``)."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": f"{SOURCE_PREFIX}/{source}",
            "type": event_type,
            "time": format_event_time(time_ms),
            "subject": subject,
            "datacontenttype": "application/json",
            "data": data,
        }
    )
