"""Checking a webhook delivery before acting on it.

railproof signs deliveries the Standard Webhooks way (https://www.standardwebhooks.com):
headers `webhook-id`, `webhook-timestamp` and `webhook-signature`, an endpoint secret written
`whsec_<base64>`. The check itself is the `standardwebhooks` package's; this module turns its
failures into one error type and the body into a typed event.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError
from standardwebhooks import Webhook
from standardwebhooks import WebhookVerificationError as _SignatureMismatch
from standardwebhooks.webhooks import EmptyWebhookSecretError

from railproof_client.errors import WebhookVerificationError
from railproof_client.models import WebhookEvent


class WebhookVerifier:
    """Build once per endpoint secret; `verify` each delivery's raw body and headers."""

    def __init__(self, secret: str):
        try:
            self._webhook = Webhook(secret)
        except (EmptyWebhookSecretError, ValueError) as e:
            raise ValueError(
                "the webhook secret is not a whsec_<base64> secret"
            ) from e  # never echo the secret

    def verify(self, body: bytes | str, headers: Mapping[str, str]) -> WebhookEvent:
        """The event, once the signature over the exact body bytes matches and the timestamp is
        within five minutes of now (a replayed old delivery fails). Also de-duplicate on
        `event.id` (= the `webhook-id` header): deliveries are at least once."""
        try:
            payload = self._webhook.verify(body, dict(headers.items()))
        except (_SignatureMismatch, ValueError) as e:
            # ValueError: a malformed signature header, or a body that is not JSON.
            raise WebhookVerificationError(f"webhook rejected: {e}") from e
        try:
            return WebhookEvent.model_validate(payload)
        except ValidationError as e:
            raise WebhookVerificationError(f"signed body is not a railproof event: {e}") from e


def verify_webhook(secret: str, body: bytes | str, headers: Mapping[str, str]) -> WebhookEvent:
    """`WebhookVerifier(secret).verify(body, headers)`."""
    return WebhookVerifier(secret).verify(body, headers)
