"""Business rules and transaction boundaries: sessions, proofs, the apply gate, audit,
events, webhooks, idempotency, assurance. Routes and commands call these; these call storage."""
