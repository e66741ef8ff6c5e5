"""The head watchdog (rails.transport.heads) and a connection made through an HTTPS proxy.

With HTTPS_PROXY=https://… and an https RPC URL, urllib3 speaks TLS inside the proxy's TLS
(TLS-in-TLS): the connection's `sock` is urllib3's SSLTransport, not a socket.socket. The
watchdog ends such a connection's trickled head at the call's end too, and one connection it
cannot shut down never ends the watch of every other (its one thread is never lost).
Loopback only: a self-signed certificate (below) for a TLS trickling node and a TLS proxy.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from rails.errors import TransportError
from rails.transport.solana_http import RetryPolicy as SolanaPolicy
from rails.transport.solana_http import SolanaRpcTransport
from tests.test_rpc_trickle import WAIT_S, _ends_within

# openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -subj /CN=127.0.0.1
#   -addext subjectAltName=IP:127.0.0.1,DNS:localhost
CERT_AND_KEY = """\
-----BEGIN CERTIFICATE-----
MIIDJzCCAg+gAwIBAgIUfZIoEW/C2TXE50bhIcH6zDDrFb4wDQYJKoZIhvcNAQEL
BQAwFDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTIwNzAyMjIzN1oYDzIxMjYx
MTEzMDIyMjM3WjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwggEiMA0GCSqGSIb3DQEB
AQUAA4IBDwAwggEKAoIBAQDBCZ9XSTg8K3es8FTgInwunVQ+UGUZVXdZt4+jgHjf
o0Cpv378ZxllS440uZEDjrvtWfCxmgNITYUonKM1UURvFI9skxizkS21FUuK4WIE
eWWjG2V1w6SDJILOxYQwo3AQ08G0YYWLwrVl0Yht8PdOo4dvbertv9q8hSNh7qZw
P5T54JxDrHJtEseawexyNR82ag7GmaJXtR2klFeoQICTTUx+0svDbjGJUpREQ9bp
HopYeC5vO8ZdwvMDfW5Yrikvs9HoTQniRpmvgBhUye8lAAW2PzZpdSWpDMw9IjAe
aldHW8BraTMgU5xuEGIzzD55Xi8BiWfKHQaODDCh3HllAgMBAAGjbzBtMB0GA1Ud
DgQWBBREP7dhau75bDMTfeLsmPicq+WxDjAfBgNVHSMEGDAWgBREP7dhau75bDMT
feLsmPicq+WxDjAPBgNVHRMBAf8EBTADAQH/MBoGA1UdEQQTMBGHBH8AAAGCCWxv
Y2FsaG9zdDANBgkqhkiG9w0BAQsFAAOCAQEAQzRkdl3yI+HhkH0rl89e9ssGWTGQ
Q+a0Q1yqdNebVE8TjGUZOPSreEpUIIU/Y477RD5hrKLW8RPocp43sMeT+m4jWrfh
1vfn+eMvBWjMvkVGRCNvwDeD1qXmfWQ9bckgiArbPnUIB9tTFymJfCaXcf0OILqA
BZn0aL4cOL+uU0QsP7G0Kamew9b9TG4DjRzW5wdMLuevW1mWjYacL3rYyCa1EMbr
SFmhTjkuv/PNuZ7TLVGrjKEO91APKI/JqFD2cIkBEY6svNEuZq0Ugu7JTsW+SOpP
lipHPaJFQIxoqAbhxyb6PdkZ9kHQCTxvJCspq+PHCOJJ9xSFmFGHF+49Kg==
-----END CERTIFICATE-----
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDBCZ9XSTg8K3es
8FTgInwunVQ+UGUZVXdZt4+jgHjfo0Cpv378ZxllS440uZEDjrvtWfCxmgNITYUo
nKM1UURvFI9skxizkS21FUuK4WIEeWWjG2V1w6SDJILOxYQwo3AQ08G0YYWLwrVl
0Yht8PdOo4dvbertv9q8hSNh7qZwP5T54JxDrHJtEseawexyNR82ag7GmaJXtR2k
lFeoQICTTUx+0svDbjGJUpREQ9bpHopYeC5vO8ZdwvMDfW5Yrikvs9HoTQniRpmv
gBhUye8lAAW2PzZpdSWpDMw9IjAealdHW8BraTMgU5xuEGIzzD55Xi8BiWfKHQaO
DDCh3HllAgMBAAECggEAB4fSBI3ZomoTfdz7tQ+08DBlvi8unOJxtYxv6QUeXtXh
TdrBP/4spmZtBB9xUD+qX9jIbaep6GrskcURWxRFYWwrQsudPqB6Aj+0Esh2mK3J
gLRIc1bmk56IkAglpaxM9z18Wvm+XWsP3qQ7mIbHOw6tl9oxPHhyac4FPDEn1iac
Sr2aX6XZeuadymIR+Ke8UrJlZCvLySJtwgST+/g/xwylUgXAmr8n4rOlrq8QKdZL
Cf4DJXISdNRLIP5gO9ahgVWDVJi8qX6mQQ8o5JuDFKybaxpX4dlQ5x0FSquRCxtf
SYf2vmL59f6uflacc97ZhnHso3bL4nRn4i0e5nd+eQKBgQDe2ER7HIyEVVvN/gDi
dcn02Q2t2KRP1nAh8Fq9ZfZYwr8v5SFY81MRa+lfIKjsqrE+6ZAJb/puC+gs9+14
FwpgKlMST1AUS8ahnc7rJ1ZgjRkVKRwkArOHPifhG+7zYXJHg+wYswkJ+zdUYO56
KyHW4BxJH/HgeJcgQr/QN8cDSQKBgQDdwg4q1JWbMvnMYNCGGdOPLGE9veRDqFBp
9/hWQptTt57C84NvgjkXaGF76ylm2M2kpDTYlhiGwWAjJz47dJ1ylNa9y1ZXJbst
NnlNmm76KRabltGJY0wGVzIy+Dh/bt7HcYYbaBQbP+lKd6vgueMnhTTK3z2GpHex
MkpKjpopPQKBgQCS122gtjo9xUV+Yp7Qmw9eQVzLLpNvbH1tT8VrQnHnIUT8WX70
7znQpAwevBW0BfJP43YfUeNyenQelaysUnpqzdj5mrvI8/nKa4N63uwDKVba48EA
VatZNfLvWgnF5HN6foqn5+nP4vMdrdXXOO7OedUJtnwbDzt+bZ2ZpfeEyQKBgGLN
BeDhTDKUmKUNcXp94TtF66FFjID0abd86qEMFgZLpil3s1SoMWWTdPNwB8cxyxWS
r5Tb8tt/JqUi4+A7iba2R6LSCIrVXbq8LXl81/sO+Wqi3IKYwhOFH/GDlDB6pjk4
BCcLzQGDDR7HiMWcLG+8MpQ8uD3X4xgIrv7e4CKFAoGBAMmA3hIAv/FpMFKQiEQP
WDsPzfnmhAebKBfmxUSsR3XbEAJ6nd1F5kfJhu4eyyVcobNi49r8elK89ss9esmp
KWpFkS5Icm4dE1mYY/zKs7Fp8y/Zrf+nRy+hiKNYKMpUjIcT193LewRj3EWC6IlT
kEJ4tRDtRyseDvqTbM10GoLU
-----END PRIVATE KEY-----
"""

TRICKLE_S = 30.0


def _tls_server(ctx: ssl.SSLContext, serve, stop: threading.Event) -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)

    def accept() -> None:
        while not stop.is_set():
            try:
                raw, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return

            def handle(raw: socket.socket = raw) -> None:
                try:
                    raw.settimeout(5)
                    conn = ctx.wrap_socket(raw, server_side=True)
                    conn.settimeout(None)
                    serve(conn)
                except OSError:
                    pass
                finally:
                    raw.close()

            threading.Thread(target=handle, daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


@pytest.fixture
def tls_trickle_via_https_proxy(tmp_path: Path, monkeypatch) -> Iterator[str]:
    pem = tmp_path / "loopback.pem"
    pem.write_text(CERT_AND_KEY)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    stop = threading.Event()

    def trickle(conn: ssl.SSLSocket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 ")
        until = time.monotonic() + TRICKLE_S
        while not stop.is_set() and time.monotonic() < until:
            conn.sendall(b"O")
            stop.wait(0.2)

    def proxy(conn: ssl.SSLSocket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        _, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        host, _, port = target.decode().rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pipe(src, dst) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.close()
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        pipe(conn, upstream)

    node = _tls_server(ctx, trickle, stop)
    gate = _tls_server(ctx, proxy, stop)
    # The loopback certificate trusted (OpenSSL's default verify paths honour SSL_CERT_FILE),
    # the proxy named as deployments name it.
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))
    monkeypatch.setenv("HTTPS_PROXY", f"https://127.0.0.1:{gate.getsockname()[1]}")
    for name in ("NO_PROXY", "no_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield f"https://127.0.0.1:{node.getsockname()[1]}/"
    finally:
        stop.set()
        node.close()
        gate.close()


def test_a_trickled_head_through_an_https_proxy_is_cut_off_at_the_calls_end(
    tls_trickle_via_https_proxy,
):
    t = SolanaRpcTransport(
        [tls_trickle_via_https_proxy],
        "solana-mainnet",
        SolanaPolicy(attempts=1, timeout=0.5, total_seconds=1.0),
    )
    ended, took, out = _ends_within(lambda: t.call("getSlot", []), WAIT_S)
    assert ended, (
        f"the call was still reading a trickled head through an HTTPS proxy {took:.1f}s into "
        "a 1s total budget (the head watchdog died on a TLS-in-TLS socket)"
    )
    assert isinstance(out, TransportError), repr(out)


def test_after_a_watchdog_fire_through_an_https_proxy_other_nodes_heads_are_still_bounded(
    tls_trickle_via_https_proxy, monkeypatch
):
    """The one watchdog thread serves every connection of the process: one fire on a
    TLS-in-TLS connection must not leave a plain node's trickled head unbounded after it."""
    from tests.test_rpc_head_trickle import HEADS, _trickling

    proxied = SolanaRpcTransport(
        [tls_trickle_via_https_proxy],
        "solana-mainnet",
        SolanaPolicy(attempts=1, timeout=0.5, total_seconds=1.0),
    )
    _ends_within(lambda: proxied.call("getSlot", []), WAIT_S)
    monkeypatch.delenv("HTTPS_PROXY")
    for url in _trickling(*HEADS["status-line"]):
        direct = SolanaRpcTransport(
            [url], "solana-mainnet", SolanaPolicy(attempts=1, timeout=0.5, total_seconds=1.0)
        )
        ended, took, out = _ends_within(partial(direct.call, "getSlot", []), WAIT_S)
        assert ended, (
            f"a plain http node's trickled head was still being read {took:.1f}s into a 1s "
            "budget: the head watchdog thread is gone for the whole process"
        )
        assert isinstance(out, TransportError), repr(out)
