"""The railproof engine: storage, verification service, settlement, apply gate, API, CLI."""
