"""Chain I/O behind one seam (`rails.base.Transport`: `call(method, params)` → the raw
`result`), so the live clients and the cassette replay share everything above them.

    cassette      recorded answers, replayed (tests, offline verification, the demo)
    recording     any transport, wrapped, writing what it saw as a cassette
    rpc_policy    the deployment's per-network bounds (timeout, attempts, total, deadline)
    failover      bounded retries and URL failover for the HTTP transports
    solana_http   Solana JSON-RPC (solders/solana-py types, urllib3 pool; a transaction and
                  its status in one batched round trip)
    evm_http      EVM JSON-RPC (web3.py's HTTPProvider)
    tron_http     the Tron HTTP API

Errors are rails.errors' (TransportError and CassetteError, the tree drawn there). A family
module imports its live transport only inside `live_transport`, so adapters load without
the HTTP stacks.
"""
