"""The rail registry: catalog, stages, proof contracts, approvals rules, readiness. Pure code."""
