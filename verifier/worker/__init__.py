"""The background worker: re-verification, finality, auto-apply, deliveries."""
