"""RPC provider health: each URL that fails a call (after its retries) is counted by network,
provider and kind, so an operator sees which provider is down while failover hides it from
payers. The provider label is scheme://host[:port]: the path and query, where providers put
API keys, never reach a metric or a log."""

from __future__ import annotations

import json

from rails.transport.solana_http import RetryPolicy
from tests.fault_rpc import DEMO_CASSETTE, FaultRpcNode
from tests.jsonrpc_server import Fault
from verifier.core.config import Settings
from verifier.core.engine import Engine

DEMO = json.loads(DEMO_CASSETTE.read_text())["demo"]
FAST = RetryPolicy(
    attempts=2, timeout=0.5, total_seconds=4.0, backoff_initial=0.01, backoff_max=0.02
)


def test_a_failing_provider_is_counted_by_host_and_never_by_key(tmp_path):
    down = FaultRpcNode([DEMO_CASSETTE]).start()
    up = FaultRpcNode([DEMO_CASSETTE]).start()
    try:
        down.always(Fault.status(503))
        keyed = down.url.rstrip("/") + "/v2/SECRET-API-KEY?api-key=SECRET"
        settings = Settings(
            database_url=f"sqlite:///{tmp_path}/r.db",
            chain="live",
            env={"RAILPROOF_RPC_SOLANA_MAINNET": f"{keyed},{up.url}"},
            audit_key="k",
        )
        engine = Engine(settings)
        transport = engine.chains.transport("solana", "solana-mainnet")
        transport.policy = FAST  # the deployment's transport (default factory), fast retries
        params = [
            DEMO["signature"],
            {"encoding": "jsonParsed", "maxSupportedTransactionVersion": 0},
        ]
        answer = transport.call("getTransaction", params)
        assert answer is not None  # failover reached the healthy node
        text = engine.metrics.render().decode()
        line = next(
            ln for ln in text.splitlines() if ln.startswith("railproof_rpc_provider_errors_total{")
        )
        provider = down.url.rstrip("/")
        assert f'provider="{provider}"' in line and 'kind="transient"' in line
        assert 'network="solana-mainnet"' in line and line.endswith(" 1.0")
        assert "SECRET" not in text
        # The healthy provider has no series.
        assert f'provider="{up.url.rstrip("/")}"' not in text
        engine.db.dispose()
    finally:
        down.stop()
        up.stop()
