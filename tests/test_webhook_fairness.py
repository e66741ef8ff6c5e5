"""One tenant's hanging receivers hold up no other tenant's deliveries (README "Webhooks"): a
worker's POSTs go out as slots, at most RAILPROOF_WEBHOOK_TOKEN_CONCURRENCY of them to one
token's endpoints together (leases of other workers count), what falls due while POSTs are in
flight is claimed every poll, and the worker's webhook thread never waits for a batch's last
POST. Before: rounds of `concurrency` POSTs each waited for their slowest, the cap was per
endpoint (a token may have 16), and a delivery falling due waited for a hanging POST to end.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from tests.conftest import CLOCK, OTHER_SERVICE_TOKEN, auth
from tests.test_webhooks import FAST, api, subscribe  # noqa: F401
from tests.webhook_receiver import Receiver
from verifier.services import webhooks
from verifier.services.events import emit
from verifier.storage.webhook_models import WebhookDelivery
from verifier.worker import loop as worker

# A timeout long enough that alice's held receivers are still held when bob's is looked for.
SLOW = replace(FAST, timeout_s=30.0, lease_s=60.0)


def _emit(engine, at, owner: str, rid: str) -> str:
    with engine.db.tx() as s:
        return emit(s, at, "proof.verified", owner, "proof", rid, {"id": rid})


def _held_receivers(n: int, hold: threading.Event) -> list[Receiver]:
    rcvs = [Receiver().__enter__() for _ in range(n)]
    for r in rcvs:
        r.hold = hold
    return rcvs


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tenants_several_hanging_endpoints_do_not_hold_up_another_tenants_delivery(
    engine,
    api,  # noqa: F811
    workers,
):
    """Alice has as many hanging endpoints as would fill every worker's slots two at a time
    (paths of one server of her own will do): together they get `per_token` slots, and bob's
    delivery goes out beside them, with one worker or two."""
    n_alice = workers * SLOW.concurrency // SLOW.per_token
    hold = threading.Event()
    alice_rcvs = _held_receivers(n_alice, hold)
    try:
        with Receiver() as bob_rcv:
            for rcv in alice_rcvs:
                subscribe(api, rcv, ["proof.verified"])  # alice's token, one endpoint each
            subscribe(api, bob_rcv, ["proof.verified"], OTHER_SERVICE_TOKEN)
            for i in range(5):  # a small backlog of alice's, due before bob's
                _emit(engine, CLOCK + timedelta(seconds=i), "alice", f"pa{i}")
            bob_ev = _emit(engine, CLOCK + timedelta(seconds=10), "bob", "pb")
            now = CLOCK + timedelta(minutes=1)
            sweeps = [
                threading.Thread(
                    target=webhooks.deliver_due,
                    args=(engine, f"w{w}", 50),
                    kwargs={"now": now, "config": SLOW},
                )
                for w in range(workers)
            ]
            for sweep in sweeps:
                sweep.start()
            try:
                # Bob's delivery goes out beside alice's held ones, long before any of hers
                # times out (30 s).
                got = [e["id"] for e in bob_rcv.wait_for(1, deadline_s=10)]
                assert got == [bob_ev], "bob's delivery waited behind alice's hanging receivers"
            finally:
                hold.set()
                for sweep in sweeps:
                    sweep.join(60)
    finally:
        hold.set()
        for rcv in alice_rcvs:
            rcv.__exit__(None, None, None)


def test_one_hanging_endpoint_does_not_stall_the_worker_at_every_batch_end(engine, api):  # noqa: F811
    """Alice has one endpoint, which hangs. The worker's webhook thread used to run sweeps of
    `batch` deliveries, each returning once its last POST ended: the rest of bob's waited for
    alice's receiver at the end of every sweep. It now claims as slots free, whatever the
    batch."""
    s = engine.settings
    s.webhook_timeout_seconds, s.webhook_lease_seconds = 30.0, 60.0
    s.webhook_concurrency, s.webhook_token_concurrency = 4, 2
    hold = threading.Event()
    (alice_rcv,) = _held_receivers(1, hold)
    stop = threading.Event()
    try:
        with Receiver() as bob_rcv:
            subscribe(api, alice_rcv, ["proof.verified"])
            subscribe(api, bob_rcv, ["proof.verified"], OTHER_SERVICE_TOKEN)
            for i in range(2):
                _emit(engine, CLOCK + timedelta(seconds=i), "alice", f"pa{i}")
            bob = [
                _emit(engine, CLOCK + timedelta(seconds=10 + i), "bob", f"pb{i}") for i in range(6)
            ]
            run = threading.Thread(
                target=worker.deliver_forever,
                args=(engine, "w1", 4, 0.05, stop),  # batch 4: one of alice's pair + bob's two
                daemon=True,
            )
            run.start()
            try:
                got = [e["id"] for e in bob_rcv.wait_for(len(bob), deadline_s=10)]
                assert sorted(got) == sorted(bob), (
                    f"{len(got)} of bob's {len(bob)} deliveries went out while alice's held"
                )
            finally:
                stop.set()
                hold.set()
                run.join(60)
    finally:
        stop.set()
        hold.set()
        alice_rcv.__exit__(None, None, None)


def test_a_delivery_due_while_a_receiver_hangs_goes_out_beside_it(engine, api):  # noqa: F811
    """Alice has one endpoint, which hangs; the worker has free slots. Bob's event is written
    while alice's POST is in flight: it is claimed at the next poll, not once alice's POST
    ends."""
    hold = threading.Event()
    (alice_rcv,) = _held_receivers(1, hold)
    try:
        with Receiver() as bob_rcv:
            subscribe(api, alice_rcv, ["proof.verified"])
            subscribe(api, bob_rcv, ["proof.verified"], OTHER_SERVICE_TOKEN)
            _emit(engine, CLOCK, "alice", "pa")
            now = CLOCK + timedelta(minutes=1)
            sweep = threading.Thread(
                target=webhooks.deliver_due,
                args=(engine, "w1", 50),
                kwargs={"now": now, "config": SLOW},
            )
            sweep.start()
            try:
                # Alice's POST is in flight (held) before bob's event exists.
                assert _wait_requests(alice_rcv, 1)
                bob_ev = _emit(engine, CLOCK + timedelta(seconds=1), "bob", "pb")
                got = [e["id"] for e in bob_rcv.wait_for(1, deadline_s=10)]
                assert got == [bob_ev], "bob's delivery waited for alice's hanging receiver"
            finally:
                hold.set()
                sweep.join(60)
    finally:
        hold.set()
        alice_rcv.__exit__(None, None, None)


def _wait_requests(rcv: Receiver, n: int, deadline_s: float = 10.0) -> bool:
    done = threading.Event()
    for _ in range(int(deadline_s / 0.01)):
        with rcv.lock:
            if len(rcv.requests) >= n:
                return True
        done.wait(0.01)
    return False


def test_a_tenants_host_name_that_never_resolves_holds_only_its_own_slots(
    engine,
    api,  # noqa: F811
    monkeypatch,
):
    """With any host allowed a named host is resolved at send time. Alice's name never
    resolves (her DNS server never answers): the POST times out, but the lookup's thread
    cannot be stopped and runs on until the resolver gives up. Lookups ran on the event
    loop's default thread pool, which also runs every claim and outcome write: once alice's
    had filled it nothing was claimed for anyone, and bob's delivery waited. Lookups now run
    on threads of the sweep's own, and one still running holds a slot of its token."""
    hang = ".hang.test"  # names whose (simulated) authoritative server never answers
    release = threading.Event()
    lock = threading.Lock()
    running, most = [0], [0]
    real = socket.getaddrinfo

    def slow_dns(host, *a, **k):
        if isinstance(host, str) and host.endswith(hang):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            try:
                release.wait(60)  # the resolver waiting on a server that never answers
            finally:
                with lock:
                    running[0] -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)
    monkeypatch.setattr(engine.settings, "webhook_allow_any_host", True)
    monkeypatch.setattr(engine.settings, "webhook_private_networks", ["127.0.0.0/8"])
    cfg = replace(
        FAST,
        timeout_s=0.3,
        lease_s=30.0,
        poll_s=0.05,
        concurrency=32,
        per_token=2,
        allow_any_host=True,
        private_networks=("127.0.0.0/8",),
    )
    default_pool = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
    with Receiver() as bob_rcv:
        r = api.post(
            "/v1/webhook-endpoints",
            headers=auth(),
            json={"url": f"http://hooks{hang}/in", "event_types": ["proof.verified"]},
        )
        assert r.status_code == 201, r.text
        subscribe(api, bob_rcv, ["proof.verified"], OTHER_SERVICE_TOKEN)
        for i in range(default_pool + 8):  # alice's backlog: one resource each, all due
            _emit(engine, CLOCK, "alice", f"pa{i}")
        sweep = threading.Thread(
            target=webhooks.deliver_due,
            args=(engine, "w1", 1000),
            kwargs={"now": CLOCK + timedelta(minutes=1), "config": cfg},
            daemon=True,
        )
        sweep.start()
        try:
            # Alice's POSTs time out after 0.3 s each: let several timeouts pass.
            time.sleep(2.0)
            bob_ev = _emit(engine, CLOCK, "bob", "pb")
            got = [e["id"] for e in bob_rcv.wait_for(1, deadline_s=6)]
            assert got == [bob_ev], (
                f"bob's delivery was not sent while {running[0]} lookups of alice's host hung"
            )
            # Her lookups still running held her slots: no more of them were started.
            assert most[0] == cfg.per_token, most[0]
        finally:
            release.set()
            sweep.join(60)


def test_a_lookup_given_up_while_a_claim_waits_for_the_database_is_counted(
    engine,
    api,  # noqa: F811
):
    """The sweep's claim runs on a thread while POSTs go on. One of alice's two POSTs times out
    while its host name lookup still runs (the lookup now holds her slot), and its outcome ends
    its lease, between the claim being started and its transaction reading the leases: the
    slot was counted neither as a lease (ended) nor as held (read when the claim started), and
    a third lookup of her hanging name was started. Held lookups are read after the leases."""
    with Receiver() as rcv:
        subscribe(api, rcv, ["proof.verified"])  # alice's token
        for i in range(3):
            _emit(engine, CLOCK, "alice", f"pa{i}")
        now = CLOCK + timedelta(minutes=1)
        cfg = replace(FAST, per_token=2)
        held: dict[str, int] = {}
        first = webhooks.claim(engine, "w1", 10, now, cfg, lambda: dict(held))
        assert len(first) == 2  # her two slots, both leased
        timed_out = first[0]
        claimer = threading.get_ident()
        staged = threading.Event()

        def post_times_out() -> None:
            # What the sweep does when a POST's timeout gives up on its lookup: the lookup is
            # held, then the outcome is written, which ends the lease.
            held[timed_out.principal] = 1
            with engine.db.tx() as s:
                d = s.get(WebhookDelivery, timed_out.delivery_id)
                d.claimed_by = d.claimed_until = None
                d.next_attempt_at = now + timedelta(minutes=5)

        def on_begin(conn) -> None:
            if threading.get_ident() == claimer and not staged.is_set():
                staged.set()  # as the claim's transaction begins (the lock it waited for)
                t = threading.Thread(target=post_times_out)
                t.start()
                t.join()

        sa_engine = engine.db.engine
        event.listen(sa_engine, "begin", on_begin)
        try:
            again = webhooks.claim(engine, "w1", 10, now, cfg, lambda: dict(held))
        finally:
            event.remove(sa_engine, "begin", on_begin)
        assert staged.is_set()
        assert again == [], "a third of alice's deliveries was claimed beside her two slots"
        held.clear()  # the lookup returned: its slot is free again
        last = webhooks.claim(engine, "w1", 10, now, cfg, lambda: dict(held))
        assert len(last) == 1
        assert last[0].delivery_id not in {j.delivery_id for j in first}


def test_a_worker_stopped_during_its_deliveries_claims_no_more(
    engine,
    api,  # noqa: F811
):
    """`railproof worker --once` stopped (SIGTERM) while its sweep delivers webhooks: the POSTs
    under way end and are recorded, nothing more is claimed, and the rest stay due for the next
    worker, untried. Before, the delivery phase ignored the stop and sent the whole backlog."""
    hold = threading.Event()
    with Receiver() as rcv:
        rcv.hold = hold
        subscribe(api, rcv, ["proof.verified"])
        backlog = [_emit(engine, CLOCK + timedelta(seconds=i), "alice", f"pa{i}") for i in range(6)]
        stop = threading.Event()
        out: dict[str, int] = {}
        sweep = threading.Thread(
            target=lambda: out.update(worker.sweep(engine, "w1", 100, stop=stop)), daemon=True
        )
        sweep.start()
        try:
            per_token = engine.settings.webhook_token_concurrency
            assert _wait_requests(rcv, per_token), "no delivery went out"
            stop.set()  # the supervisor stops the worker
        finally:
            hold.set()
        sweep.join(30)
        assert not sweep.is_alive()
        sent = rcv.ids()
        assert len(sent) == per_token and set(sent) <= set(backlog), sent
        assert out.get("webhooks_delivered") == per_token, out
        with engine.db.tx() as s:
            rest = s.scalars(
                select(WebhookDelivery).where(WebhookDelivery.event_id.not_in(sent))
            ).all()
        assert len(rest) == len(backlog) - per_token
        assert all((d.status, d.attempts, d.claimed_by) == ("pending", 0, None) for d in rest), [
            (d.status, d.attempts, d.claimed_by) for d in rest
        ]
