"""Build the generated Solana cassettes in fixtures/solana/generated/.

Each case is a real transaction: signed with deterministic keys and executed by the real SPL
Token, Token-2022, associated-token-account and memo programs inside LiteSVM (solders 0.29).
LiteSVM keeps no slot/blockTime/token-balance history, so the script reads every account of the
transaction before and after executing it and renders what a node's `getTransaction`
(encoding jsonParsed) would return for it; the `getSignatureStatuses` answer is written next
to it with the commitment the case needs. Re-running reproduces the same files (same seeds,
same blockhashes, hence the same signatures).

It also turns the real json-encoded v0 transaction (fixtures/raw/sol_v0_json_loadedaddresses…)
into a cassette in fixtures/solana/.

    .venv/bin/python scripts/make_solana_cassettes.py
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import base58
import orjson
import spl.token.instructions as ti
import spl.token.models as tm
from solders.account import Account
from solders.address_lookup_table_account import ID as ALT_PROGRAM
from solders.address_lookup_table_account import AddressLookupTableAccount, LookupTableMeta
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, TransferParams, create_account, transfer
from solders.token.state import TokenAccount
from solders.transaction import VersionedTransaction
from spl.memo.instructions import create_memo
from spl.memo.models import MemoParams
from spl.token.constants import MINT_LEN, TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "solana" / "generated"
NETWORK = "solana-mainnet"
USDC = Pubkey.from_string("EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v")
MEMO_PROGRAM = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
SYSTEM_PROGRAM = Pubkey.from_string("11111111111111111111111111111111")
ATA_PROGRAM = Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL")
COMPUTE_BUDGET = Pubkey.from_string("ComputeBudget111111111111111111111111111111")
TOKEN_PROGRAMS = {TOKEN_PROGRAM_ID: "spl-token", TOKEN_2022_PROGRAM_ID: "spl-token-2022"}
# Token-2022 mint with the TransferFeeConfig extension: base mint padded to the account
# length, the account-type byte, then one TLV entry (2 + 2 + 108 bytes).
FEE_MINT_LEN = 165 + 1 + 4 + 108
DEMO_BLOCK_TIME = 1767225660  # 2026-01-01T00:01:00Z
HOW = (
    "real signed transaction executed by the SPL programs in LiteSVM (solders 0.29); accounts read before "
    "and after execution and rendered as getTransaction jsonParsed by scripts/make_solana_cassettes.py; "
    "slot, blockTime and getSignatureStatuses chosen by the script"
)


def key(name: str) -> Keypair:
    """A deterministic keypair per role, so every run signs the same transactions."""
    return Keypair.from_seed(hashlib.sha256(f"railproof-fixture:{name}".encode()).digest())


PAYER, ALICE, BOB = key("fee-payer"), key("alice"), key("bob")
TREASURY = key("treasury").pubkey()
MERCHANT = key("merchant").pubkey()  # a recipient whose token account does not exist yet
OTHER = key("someone-else").pubkey()
TIP = key("tip-account").pubkey()


# -- a small LiteSVM harness ---------------------------------------------------------------------


@dataclass
class Executed:
    tx: VersionedTransaction
    meta: Any
    keys: list[Pubkey]
    sources: list[str]
    lookups: list[dict[str, Any]]
    pre: dict[Pubkey, Any]
    post: dict[Pubkey, Any]
    slot: int
    block_time: int


@dataclass
class Chain:
    svm: LiteSVM = field(default_factory=LiteSVM)
    tables: dict[Pubkey, list[Pubkey]] = field(default_factory=dict)
    decimals: dict[Pubkey, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for who in (PAYER, ALICE, BOB):
            self.svm.airdrop(who.pubkey(), 100 * 10**9)

    def send(
        self,
        ixs: list[Instruction],
        signers: list[Keypair],
        *,
        v0_tables: list[Pubkey] | None = None,
        block_time: int = DEMO_BLOCK_TIME,
        expect_ok: bool = True,
    ) -> Executed:
        self.svm.expire_blockhash()
        bh = self.svm.latest_blockhash()
        if v0_tables is None:
            msg: Any = Message.new_with_blockhash(ixs, signers[0].pubkey(), bh)
        else:
            alts = [AddressLookupTableAccount(t, self.tables[t]) for t in v0_tables]
            msg = MessageV0.try_compile(signers[0].pubkey(), ixs, alts, bh)
        tx = VersionedTransaction(msg, signers)
        keys, sources, lookups = self._account_keys(msg)
        pre = {k: self.svm.get_account(k) for k in keys}
        clock = self.svm.get_clock()
        clock.unix_timestamp = block_time
        self.svm.set_clock(clock)
        meta = self.svm.send_transaction(tx)
        if expect_ok and hasattr(meta, "err"):
            raise RuntimeError(f"transaction failed in LiteSVM: {meta}")
        post = {k: self.svm.get_account(k) for k in keys}
        slot = self.svm.get_clock().slot
        self.svm.warp_to_slot(slot + 3)
        return Executed(tx, meta, keys, sources, lookups, pre, post, slot, block_time)

    def _account_keys(self, msg: Any) -> tuple[list[Pubkey], list[str], list[dict[str, Any]]]:
        keys = list(msg.account_keys)
        sources = ["transaction"] * len(keys)
        lookups: list[dict[str, Any]] = []
        if isinstance(msg, MessageV0):
            writable, readonly = [], []
            for lk in msg.address_table_lookups:
                table = self.tables[lk.account_key]
                writable += [table[i] for i in lk.writable_indexes]
                readonly += [table[i] for i in lk.readonly_indexes]
                lookups.append(
                    {
                        "accountKey": str(lk.account_key),
                        "readonlyIndexes": list(lk.readonly_indexes),
                        "writableIndexes": list(lk.writable_indexes),
                    }
                )
            keys += writable + readonly
            sources += ["lookupTable"] * (len(writable) + len(readonly))
        return keys, sources, lookups

    # -- setup helpers (their transactions are not written out) ----------------------------------

    def make_mint(
        self,
        name: str,
        decimals: int,
        *,
        at: Pubkey | None = None,
        program: Pubkey = TOKEN_PROGRAM_ID,
        fee_bps: int | None = None,
    ) -> Pubkey:
        mint = key(f"mint:{name}")
        space = FEE_MINT_LEN if fee_bps is not None else MINT_LEN
        ixs = [
            create_account(
                CreateAccountParams(
                    from_pubkey=PAYER.pubkey(),
                    to_pubkey=mint.pubkey(),
                    owner=program,
                    space=space,
                    lamports=self.svm.minimum_balance_for_rent_exemption(space),
                )
            )
        ]
        if fee_bps is not None:
            ixs.append(
                ti.initialize_transfer_fee_config(
                    tm.InitializeTransferFeeConfigParams(
                        program_id=program,
                        mint=mint.pubkey(),
                        transfer_fee_config_authority=PAYER.pubkey(),
                        withdraw_withheld_authority=PAYER.pubkey(),
                        transfer_fee_basis_points=fee_bps,
                        maximum_fee=10**12,
                    )
                )
            )
        ixs.append(
            ti.initialize_mint(
                tm.InitializeMintParams(
                    program_id=program,
                    mint=mint.pubkey(),
                    decimals=decimals,
                    mint_authority=PAYER.pubkey(),
                    freeze_authority=None,
                )
            )
        )
        self.send(ixs, [PAYER, mint])
        address = mint.pubkey()
        if at is not None:
            # The mint's bytes do not contain its own address: copying them to the real USDC
            # address gives a mint the real programs accept there.
            acct = self.svm.get_account(address)
            self.svm.set_account(at, Account(acct.lamports, bytes(acct.data), acct.owner, False, 0))
            address = at
        self.decimals[address] = decimals
        return address

    def fund(
        self, owner: Pubkey, mint: Pubkey, amount: int, program: Pubkey = TOKEN_PROGRAM_ID
    ) -> Pubkey:
        ata = ti.get_associated_token_address(owner, mint, program)
        self.send(
            [
                ti.create_idempotent_associated_token_account(PAYER.pubkey(), owner, mint, program),
                ti.mint_to(
                    tm.MintToParams(
                        program_id=program,
                        mint=mint,
                        dest=ata,
                        mint_authority=PAYER.pubkey(),
                        amount=amount,
                    )
                ),
            ],
            [PAYER],
        )
        return ata

    def open_account(self, owner: Pubkey, mint: Pubkey) -> Pubkey:
        ata = ti.get_associated_token_address(owner, mint)
        self.send(
            [ti.create_idempotent_associated_token_account(PAYER.pubkey(), owner, mint)], [PAYER]
        )
        return ata

    def make_table(self, name: str, addresses: list[Pubkey]) -> Pubkey:
        """An address lookup table written in place; its addresses are active from the next slot."""
        table = key(f"alt:{name}").pubkey()
        meta = LookupTableMeta(
            last_extended_slot=self.svm.get_clock().slot, authority=PAYER.pubkey()
        )
        data = (struct.pack("<I", 1) + bytes(meta)).ljust(56, b"\0") + b"".join(
            bytes(a) for a in addresses
        )
        self.svm.set_account(table, Account(10**7, data, ALT_PROGRAM, False, 0))
        self.svm.warp_to_slot(self.svm.get_clock().slot + 2)
        self.tables[table] = addresses
        return table


def transfer_checked(
    source_owner: Keypair,
    mint: Pubkey,
    dest_owner: Pubkey,
    amount: int,
    decimals: int,
    *,
    program: Pubkey = TOKEN_PROGRAM_ID,
    reference: Pubkey | None = None,
) -> Instruction:
    ix = ti.transfer_checked(
        tm.TransferCheckedParams(
            program_id=program,
            source=ti.get_associated_token_address(source_owner.pubkey(), mint, program),
            mint=mint,
            dest=ti.get_associated_token_address(dest_owner, mint, program),
            owner=source_owner.pubkey(),
            amount=amount,
            decimals=decimals,
        )
    )
    if reference is not None:
        # Solana Pay: the reference is appended as a read-only, non-signer key.
        ix = Instruction(
            ix.program_id, ix.data, [*ix.accounts, AccountMeta(reference, False, False)]
        )
    return ix


def memo(text: str, signer: Keypair) -> Instruction:
    return create_memo(
        MemoParams(program_id=MEMO_PROGRAM, signer=signer.pubkey(), message=text.encode())
    )


# -- rendering as a node's jsonParsed answer ---------------------------------------------------------


def ui_amount_string(amount: int, decimals: int) -> str:
    whole, frac = divmod(amount, 10**decimals)
    frac_s = str(frac).rjust(decimals, "0").rstrip("0") if decimals else ""
    return f"{whole}.{frac_s}" if frac_s else str(whole)


def token_amount(amount: int, decimals: int) -> dict[str, Any]:
    s = ui_amount_string(amount, decimals)
    # uiAmount is the node's float field, reproduced for shape only; railproof reads "amount".
    return {
        "amount": str(amount),
        "decimals": decimals,
        "uiAmount": float(s) if amount else None,
        "uiAmountString": s,
    }


def _authority(info: dict[str, Any], accounts: list[str], first: int) -> dict[str, Any]:
    signers = accounts[first + 1 :]
    if signers:  # extra keys make the node read the authority as a multisig
        info["multisigAuthority"], info["signers"] = accounts[first], signers
    else:
        info["authority"] = accounts[first]
    return info


def parse_token(
    data: bytes, accounts: list[str], decimals_of: dict[str, int]
) -> dict[str, Any] | None:
    tag = data[0]
    if tag == 3:  # Transfer
        info = {
            "source": accounts[0],
            "destination": accounts[1],
            "amount": str(struct.unpack_from("<Q", data, 1)[0]),
        }
        return {"type": "transfer", "info": _authority(info, accounts, 2)}
    if tag == 12:  # TransferChecked
        amount, decimals = struct.unpack_from("<QB", data, 1)
        info = {
            "source": accounts[0],
            "mint": accounts[1],
            "destination": accounts[2],
            "tokenAmount": token_amount(amount, decimals),
        }
        return {"type": "transferChecked", "info": _authority(info, accounts, 3)}
    if tag == 21:  # GetAccountDataSize
        names = {7: "immutableOwner"}
        exts = [
            names.get(struct.unpack_from("<H", data, i)[0], "unknown")
            for i in range(1, len(data) - 1, 2)
        ]
        return {"type": "getAccountDataSize", "info": {"mint": accounts[0], "extensionTypes": exts}}
    if tag == 22:
        return {"type": "initializeImmutableOwner", "info": {"account": accounts[0]}}
    if tag == 18:  # InitializeAccount3
        owner = str(Pubkey.from_bytes(data[1:33]))
        return {
            "type": "initializeAccount3",
            "info": {"account": accounts[0], "mint": accounts[1], "owner": owner},
        }
    if tag == 5:  # Revoke
        return {"type": "revoke", "info": {"source": accounts[0], "owner": accounts[1]}}
    return None


def parse_instruction(
    program: str,
    accounts: list[str],
    data: bytes,
    decimals_of: dict[str, int],
    stack_height: int | None,
) -> dict[str, Any]:
    pid = Pubkey.from_string(program)
    parsed: Any = None
    name = None
    if pid in TOKEN_PROGRAMS and data:
        parsed, name = parse_token(data, accounts, decimals_of), TOKEN_PROGRAMS[pid]
    elif pid == MEMO_PROGRAM:
        parsed, name = data.decode("utf-8"), "spl-memo"
    elif pid == ATA_PROGRAM:
        kind = "createIdempotent" if data[:1] == b"\x01" else "create"
        parsed, name = (
            {
                "type": kind,
                "info": {
                    "source": accounts[0],
                    "account": accounts[1],
                    "wallet": accounts[2],
                    "mint": accounts[3],
                    "systemProgram": accounts[4],
                    "tokenProgram": accounts[5],
                },
            },
            "spl-associated-token-account",
        )
    elif pid == SYSTEM_PROGRAM and data[:4] == struct.pack("<I", 2):
        parsed, name = (
            {
                "type": "transfer",
                "info": {
                    "source": accounts[0],
                    "destination": accounts[1],
                    "lamports": struct.unpack_from("<Q", data, 4)[0],
                },
            },
            "system",
        )
    elif pid == SYSTEM_PROGRAM and data[:4] == struct.pack("<I", 0):
        lamports, space = struct.unpack_from("<QQ", data, 4)
        parsed, name = (
            {
                "type": "createAccount",
                "info": {
                    "source": accounts[0],
                    "newAccount": accounts[1],
                    "lamports": lamports,
                    "space": space,
                    "owner": str(Pubkey.from_bytes(data[20:52])),
                },
            },
            "system",
        )
    if parsed is None:  # what a node shows for programs it cannot parse (compute budget …)
        return {
            "accounts": accounts,
            "data": base58.b58encode(data).decode(),
            "programId": program,
            "stackHeight": stack_height,
        }
    return {"parsed": parsed, "program": name, "programId": program, "stackHeight": stack_height}


def _inner(g: Any, keys: list[str], decimals_of: dict[str, int]) -> dict[str, Any]:
    ix = g.instruction()
    return parse_instruction(
        keys[ix.program_id_index],
        [keys[a] for a in ix.accounts],
        bytes(ix.data),
        decimals_of,
        g.stack_height(),
    )


def token_balances(
    ex: Executed, state: dict[Pubkey, Any], chain: Chain, with_owner: bool
) -> list[dict[str, Any]]:
    out = []
    for i, k in enumerate(ex.keys):
        acct = state.get(k)
        if acct is None or acct.owner not in TOKEN_PROGRAMS or len(acct.data) < 165:
            continue
        if (
            len(acct.data) > 165 and bytes(acct.data)[165] != 2
        ):  # Token-2022: 1 = mint, 2 = token account
            continue
        ta = TokenAccount.from_bytes(bytes(acct.data)[:165])
        entry: dict[str, Any] = {"accountIndex": i, "mint": str(ta.mint)}
        if with_owner:
            entry |= {"owner": str(ta.owner), "programId": str(acct.owner)}
        entry["uiTokenAmount"] = token_amount(ta.amount, chain.decimals[ta.mint])
        out.append(entry)
    return out


def render(ex: Executed, chain: Chain, *, with_owner: bool = True) -> dict[str, Any]:
    msg = ex.tx.message
    header = msg.header
    n_static, n_sig = len(msg.account_keys), header.num_required_signatures
    keys = [str(k) for k in ex.keys]

    def writable(i: int) -> bool:
        if i >= n_static:
            return ex.sources[i] == "lookupTable" and i < n_static + sum(
                len(x["writableIndexes"]) for x in ex.lookups
            )
        if i < n_sig:
            return i < n_sig - header.num_readonly_signed_accounts
        return i < n_static - header.num_readonly_unsigned_accounts

    decimals_of = {str(m): d for m, d in chain.decimals.items()}
    instructions = [
        parse_instruction(
            keys[ix.program_id_index],
            [keys[a] for a in ix.accounts],
            bytes(ix.data),
            decimals_of,
            None,
        )
        for ix in msg.instructions
    ]
    inner = []
    for idx, group in enumerate(ex.meta.inner_instructions()):
        if group:
            inner.append(
                {"index": idx, "instructions": [_inner(g, keys, decimals_of) for g in group]}
            )
    balance = lambda state: [state[k].lamports if state.get(k) is not None else 0 for k in ex.keys]  # noqa: E731
    result = {
        "blockTime": ex.block_time,
        "meta": {
            "computeUnitsConsumed": ex.meta.compute_units_consumed(),
            "err": None,
            "fee": ex.meta.fee(),
            "innerInstructions": inner,
            "logMessages": list(ex.meta.logs()),
            "postBalances": balance(ex.post),
            "postTokenBalances": token_balances(ex, ex.post, chain, with_owner),
            "preBalances": balance(ex.pre),
            "preTokenBalances": token_balances(ex, ex.pre, chain, with_owner),
            "rewards": [],
            "status": {"Ok": None},
        },
        "slot": ex.slot,
        "transaction": {
            "message": {
                "accountKeys": [
                    {
                        "pubkey": k,
                        "signer": i < n_sig,
                        "source": ex.sources[i],
                        "writable": writable(i),
                    }
                    for i, k in enumerate(keys)
                ],
                "addressTableLookups": ex.lookups if isinstance(msg, MessageV0) else None,
                "instructions": instructions,
                "recentBlockhash": str(msg.recent_blockhash),
            },
            "signatures": [str(s) for s in ex.tx.signatures],
        },
        "version": 0 if isinstance(msg, MessageV0) else "legacy",
    }
    return result


def status(slot: int, commitment: str = "finalized") -> dict[str, Any]:
    return {
        "context": {"slot": slot + 40},
        "value": [
            {
                "slot": slot,
                "confirmations": None if commitment == "finalized" else 12,
                "err": None,
                "status": {"Ok": None},
                "confirmationStatus": commitment,
            }
        ],
    }


def cassette(what: str, calls: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "cassette": 1,
        "network": NETWORK,
        "source": f"generated: {what}",
        "how": HOW,
        **extra,
        "calls": calls,
    }


def tx_calls(sig: str, result: Any, commitment: str | None = "finalized") -> list[dict[str, Any]]:
    calls = [
        {
            "method": "getTransaction",
            "params": [sig, {"encoding": "jsonParsed", "maxSupportedTransactionVersion": 0}],
            "result": result,
        }
    ]
    if commitment is not None and result is not None:
        calls.append(
            {
                "method": "getSignatureStatuses",
                "params": [[sig], {"searchTransactionHistory": True}],
                "result": status(result["slot"], commitment),
            }
        )
    return calls


def written(
    ex: Executed,
    chain: Chain,
    what: str,
    *,
    commitment: str = "finalized",
    with_owner: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    result = render(ex, chain, with_owner=with_owner)
    return cassette(
        what, tx_calls(result["transaction"]["signatures"][0], result, commitment), **extra
    )


# -- the cases ---------------------------------------------------------------------------------------


def build() -> dict[str, dict[str, Any]]:
    c = Chain()
    usdc = c.make_mint("usdc", 6, at=USDC)
    fake = c.make_mint("fake-usdc", 6)
    nine = c.make_mint("nine-decimals", 9)
    t22 = c.make_mint("token-2022-fee", 6, program=TOKEN_2022_PROGRAM_ID, fee_bps=100)
    c.fund(ALICE.pubkey(), usdc, 1_000 * 10**6)
    c.fund(BOB.pubkey(), usdc, 1_000 * 10**6)
    c.fund(ALICE.pubkey(), fake, 1_000 * 10**6)
    c.fund(ALICE.pubkey(), nine, 1_000 * 10**9)
    c.fund(ALICE.pubkey(), t22, 1_000 * 10**6, TOKEN_2022_PROGRAM_ID)
    treasury_ata = c.open_account(TREASURY, usdc)
    c.open_account(TREASURY, fake)
    c.open_account(TREASURY, nine)
    c.fund(TREASURY, t22, 0, TOKEN_2022_PROGRAM_ID)

    out: dict[str, dict[str, Any]] = {}
    ref, demo_ref = key("reference:order-1001").pubkey(), key("reference:demo").pubkey()

    def ref_of(case: str) -> Pubkey:
        # Every payment carries a Solana Pay reference of its own: a session binds one, and
        # no two sessions share it.
        return key(f"reference:{case}").pubkey()

    t0 = DEMO_BLOCK_TIME

    ex = c.send(
        [
            transfer_checked(ALICE, usdc, TREASURY, 1_500_000, 6, reference=ref),
            memo("order-1001", ALICE),
        ],
        [ALICE],
        block_time=t0 + 60,
    )
    out["usdc_reference_memo"] = written(
        ex,
        c,
        "USDC TransferChecked of 1500000 to the treasury with a Solana Pay "
        "reference key appended and memo 'order-1001'",
        expect={
            "recipient": str(TREASURY),
            "amount": 1_500_000,
            "reference": str(ref),
            "memo": "order-1001",
            "sender": str(ALICE.pubkey()),
        },
    )

    table = c.make_table("treasury", [treasury_ata, USDC])
    ex = c.send(
        [
            transfer_checked(
                ALICE, usdc, TREASURY, 2_000_000, 6, reference=ref_of("v0_lookup_table_usdc")
            )
        ],
        [ALICE],
        v0_tables=[table],
        block_time=t0 + 120,
    )
    out["v0_lookup_table_usdc"] = written(
        ex,
        c,
        "v0 USDC TransferChecked of 2000000 whose recipient token account "
        "(and the mint) come from an address lookup table",
        expect={
            "recipient": str(TREASURY),
            "amount": 2_000_000,
            "reference": str(ref_of("v0_lookup_table_usdc")),
        },
    )

    pay = transfer_checked(ALICE, usdc, TREASURY, 3_000_000, 6, reference=ref_of("order-1002"))
    ex = c.send(
        [
            set_compute_unit_limit(200_000),
            set_compute_unit_price(5_000),
            transfer(TransferParams(from_pubkey=ALICE.pubkey(), to_pubkey=TIP, lamports=1_000_000)),
            pay,
            memo("order-1002", ALICE),
        ],
        [ALICE],
        block_time=t0 + 180,
    )
    out["extra_instructions_a"] = written(
        ex,
        c,
        "wallet-style transaction: compute budget limit and price, an "
        "unrelated SOL tip transfer, then USDC TransferChecked of 3000000, then "
        "memo 'order-1002'",
        expect={
            "recipient": str(TREASURY),
            "amount": 3_000_000,
            "memo": "order-1002",
            "reference": str(ref_of("order-1002")),
        },
    )
    ex = c.send(
        [
            memo("order-1002", ALICE),
            transfer(TransferParams(from_pubkey=ALICE.pubkey(), to_pubkey=TIP, lamports=1_000_001)),
            pay,
            set_compute_unit_price(5_001),
            set_compute_unit_limit(200_001),
        ],
        [ALICE],
        block_time=t0 + 181,
    )
    out["extra_instructions_b"] = written(
        ex,
        c,
        "the same payment with the instructions in another order: memo "
        "first, SOL tip, USDC TransferChecked of 3000000, compute budget last",
        expect={
            "recipient": str(TREASURY),
            "amount": 3_000_000,
            "memo": "order-1002",
            "reference": str(ref_of("order-1002")),
        },
    )

    ex = c.send(
        [
            ti.create_idempotent_associated_token_account(BOB.pubkey(), MERCHANT, usdc),
            transfer_checked(
                BOB, usdc, MERCHANT, 4_200_000, 6, reference=ref_of("ata_created_same_tx")
            ),
        ],
        [BOB],
        block_time=t0 + 240,
    )
    out["ata_created_same_tx"] = written(
        ex,
        c,
        "recipient's associated token account created in the same "
        "transaction (no pre-balance entry), then USDC TransferChecked of 4200000",
        expect={
            "recipient": str(MERCHANT),
            "amount": 4_200_000,
            "sender": str(BOB.pubkey()),
            "reference": str(ref_of("ata_created_same_tx")),
        },
    )

    ex = c.send(
        [
            transfer_checked(
                ALICE,
                t22,
                TREASURY,
                1_000_000,
                6,
                program=TOKEN_2022_PROGRAM_ID,
                reference=ref_of("token2022_transfer_fee"),
            )
        ],
        [ALICE],
        block_time=t0 + 300,
    )
    out["token2022_transfer_fee"] = written(
        ex,
        c,
        "Token-2022 TransferChecked of 1000000 on a mint with a 1% "
        "transfer fee: 10000 withheld, the recipient's net is 990000",
        expect={
            "recipient": str(TREASURY),
            "amount": 990_000,
            "asset": str(t22),
            "gross": 1_000_000,
            "reference": str(ref_of("token2022_transfer_fee")),
        },
    )

    ex = c.send(
        [
            transfer_checked(
                ALICE, usdc, TREASURY, 5_000_000, 6, reference=ref_of("confirmed_not_final")
            )
        ],
        [ALICE],
        block_time=t0 + 360,
    )
    out["confirmed_not_final"] = written(
        ex,
        c,
        "USDC TransferChecked of 5000000 whose status is 'confirmed', not yet finalized",
        commitment="confirmed",
        expect={
            "recipient": str(TREASURY),
            "amount": 5_000_000,
            "reference": str(ref_of("confirmed_not_final")),
        },
    )

    ex = c.send(
        [
            transfer_checked(
                ALICE, usdc, TREASURY, 24_000_000, 6, reference=ref_of("underpayment")
            ),
            memo("railproof-demo", ALICE),
        ],
        [ALICE],
        block_time=t0 + 420,
    )
    out["underpayment"] = written(
        ex,
        c,
        "USDC TransferChecked of 24000000 where the session asked 25000000",
        expect={
            "recipient": str(TREASURY),
            "amount": 25_000_000,
            "paid": 24_000_000,
            "reference": str(ref_of("underpayment")),
        },
    )

    ex = c.send(
        [transfer_checked(ALICE, fake, TREASURY, 25_000_000, 6, reference=ref_of("wrong_mint"))],
        [ALICE],
        block_time=t0 + 480,
    )
    out["wrong_mint"] = written(
        ex,
        c,
        "TransferChecked of 25000000 of a look-alike 6-decimal token (not the USDC "
        "mint) to the treasury",
        expect={
            "recipient": str(TREASURY),
            "amount": 25_000_000,
            "asset": str(fake),
            "reference": str(ref_of("wrong_mint")),
        },
    )

    ex = c.send(
        [
            transfer_checked(
                ALICE, nine, TREASURY, 25_000_000, 9, reference=ref_of("decimals_mismatch")
            )
        ],
        [ALICE],
        block_time=t0 + 540,
    )
    out["decimals_mismatch"] = written(
        ex,
        c,
        "TransferChecked of a 9-decimal mint; a rail of 6 decimals pointed at "
        "this mint must refuse it",
        expect={
            "recipient": str(TREASURY),
            "amount": 25_000_000,
            "asset": str(nine),
            "reference": str(ref_of("decimals_mismatch")),
        },
    )

    ex = c.send(
        [
            transfer_checked(
                ALICE, usdc, TREASURY, 6_000_000, 6, reference=ref_of("old_format_ambiguous")
            )
        ],
        [ALICE],
        block_time=t0 + 600,
    )
    out["old_format_ambiguous"] = written(
        ex,
        c,
        "USDC TransferChecked of 6000000 rendered in the older node format "
        "(token balances without owner/programId) and with no instruction that "
        "proves who owns the accounts",
        with_owner=False,
        expect={
            "recipient": str(TREASURY),
            "amount": 6_000_000,
            "reference": str(ref_of("old_format_ambiguous")),
        },
    )

    alice_ata = ti.get_associated_token_address(ALICE.pubkey(), usdc)
    ex = c.send(
        [
            ti.revoke(
                tm.RevokeParams(
                    program_id=TOKEN_PROGRAM_ID, account=alice_ata, owner=ALICE.pubkey()
                )
            ),
            ti.create_idempotent_associated_token_account(ALICE.pubkey(), OTHER, usdc),
            transfer_checked(
                ALICE, usdc, OTHER, 7_000_000, 6, reference=ref_of("old_format_resolved")
            ),
        ],
        [ALICE],
        block_time=t0 + 660,
    )
    out["old_format_resolved"] = written(
        ex,
        c,
        "USDC TransferChecked of 7000000 in the older node format (no owner "
        "in token balances); the owners are proved by the transaction itself: the "
        "sender signs a Revoke on its account, the recipient's account is created "
        "by the associated-token-account program",
        with_owner=False,
        expect={
            "recipient": str(OTHER),
            "amount": 7_000_000,
            "sender": str(ALICE.pubkey()),
            "reference": str(ref_of("old_format_resolved")),
        },
    )

    ex = c.send(
        [
            transfer_checked(ALICE, usdc, TREASURY, 25_000_000, 6, reference=demo_ref),
            memo("railproof-demo", ALICE),
        ],
        [ALICE],
        block_time=DEMO_BLOCK_TIME,
    )
    demo = written(
        ex,
        c,
        "the demo payment: USDC TransferChecked of 25000000 (25 USDC) to the treasury owner with "
        "a reference key and memo 'railproof-demo', finalized",
    )
    sig = demo["calls"][0]["result"]["transaction"]["signatures"][0]
    demo["demo"] = {
        "recipient": str(TREASURY),
        "amount": "25000000",
        "reference": str(demo_ref),
        "memo": "railproof-demo",
        "signature": sig,
        "clock": "2026-01-01T00:00:00Z",
    }
    out["demo_payment"] = demo

    # A signed transaction that was never sent: the node answers null.
    bh = Hash(hashlib.sha256(b"railproof-fixture:never-sent").digest())
    unsent = VersionedTransaction(
        Message.new_with_blockhash([memo("never sent", ALICE)], ALICE.pubkey(), bh), [ALICE]
    )
    out["tx_not_found"] = cassette(
        "getTransaction of a signed transaction that was never submitted: null",
        tx_calls(str(unsent.signatures[0]), None),
    )
    # Another never-sent transaction, so that replaying the whole directory keeps both cases.
    bh2 = Hash(hashlib.sha256(b"railproof-fixture:never-sent-2").digest())
    unsent2 = VersionedTransaction(
        Message.new_with_blockhash([memo("never sent 2", ALICE)], ALICE.pubkey(), bh2), [ALICE]
    )
    out["rpc_error"] = cassette(
        "getTransaction answered with a JSON-RPC error object (node unhealthy)",
        [
            {
                "method": "getTransaction",
                "params": [str(unsent2.signatures[0])],
                "error": {
                    "code": -32005,
                    "message": "Node is unhealthy",
                    "data": {"numSlotsBehind": 120},
                },
            }
        ],
        expect={"signature": str(unsent2.signatures[0])},
    )
    # A node that answers a question about one signature with another (successful) transaction.
    lying = render(ex, c)
    asked = str(key("lying-node-victim").sign_message(b"railproof-fixture:lying-node"))
    out["lying_node"] = cassette(
        "getTransaction for one signature answered with the demo payment's transaction "
        "(a different signature)",
        tx_calls(asked, lying),
        expect={"signature": asked},
    )
    return out


def json_loaded_addresses_cassette() -> dict[str, Any]:
    raw = orjson.loads(
        (
            ROOT / "fixtures" / "raw" / "sol_v0_json_loadedaddresses_usdc_swap_mainnet.json"
        ).read_bytes()
    )
    result = raw["data"]["result"]
    sig = result["transaction"]["signatures"][0]
    src = raw["source"]
    return {
        "cassette": 1,
        "network": NETWORK,
        "source": f"{src['repo']} {src['path'].split(' ')[0]} (getTransaction, encoding json, v0 with loadedAddresses)",
        "synthesized": ["getSignatureStatuses"],
        # Recorded without options: the answer is json-encoded, and the adapter (asking for
        # jsonParsed) must read both encodings.
        "calls": [
            {"method": "getTransaction", "params": [sig], "result": result},
            {"method": "getSignatureStatuses", "params": [[sig]], "result": status(result["slot"])},
        ],
    }


def dump(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


def main() -> None:
    for name, doc in build().items():
        dump(OUT / f"{name}.json", doc)
        print(f"wrote {(OUT / f'{name}.json').relative_to(ROOT)}")
    real = ROOT / "fixtures" / "solana" / "v0_json_loadedaddresses_usdc_swap.json"
    dump(real, json_loaded_addresses_cassette())
    print(f"wrote {real.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
