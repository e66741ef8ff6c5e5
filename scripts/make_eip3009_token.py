"""Compile fixtures/evm/token/TestUSDC3009.sol into fixtures/evm/token/TestUSDC3009.json.

The compiler is npm `solc` 0.8.37 (solcjs: pure JavaScript, runs offline, downloads nothing),
installed in a scratch directory outside the repository, never as a project dependency:

    mkdir -p /tmp/solcbuild && (cd /tmp/solcbuild && npm install solc@0.8.37)
    .venv/bin/python scripts/make_eip3009_token.py        # SOLC_DIR defaults to /tmp/solcbuild

The artifact keeps the ABI, the creation `bytecode`, the runtime `deployedBytecode` (what a
genesis state places at an address: the contract has no constructor and no immutables, so the
runtime code alone is the whole token) and the storage slots of its state variables (tests
write balances and allowances into a genesis state with them). Same settings as
scripts/compile_token.sh: evmVersion "cancun", optimizer on with 200 runs; re-running with the
same compiler rewrites an identical file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "fixtures" / "evm" / "token" / "TestUSDC3009.sol"
OUT = ROOT / "fixtures" / "evm" / "token" / "TestUSDC3009.json"
CONTRACT = "TestUSDC3009"
SOLC_VERSION = "0.8.37"
SETTINGS = {"evmVersion": "cancun", "optimizer": {"enabled": True, "runs": 200}}

_COMPILE_JS = r"""
const solc = require("solc");
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const output = JSON.parse(solc.compile(input));
  process.stdout.write(JSON.stringify({version: solc.version(), output: output}));
});
"""


def compile_source(solc_dir: Path) -> tuple[str, dict]:
    standard_input = {
        "language": "Solidity",
        "sources": {SRC.name: {"content": SRC.read_text()}},
        "settings": SETTINGS
        | {
            "outputSelection": {
                "*": {
                    "*": [
                        "abi",
                        "evm.bytecode.object",
                        "evm.deployedBytecode.object",
                        "evm.deployedBytecode.immutableReferences",
                        "storageLayout",
                    ]
                }
            }
        },
    }
    env = os.environ | {"NODE_PATH": str(solc_dir / "node_modules")}
    done = subprocess.run(
        ["node", "-e", _COMPILE_JS],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(
            f"node/solc failed (is solc@{SOLC_VERSION} installed in {solc_dir}?):\n{done.stderr}"
        )
    answer = json.loads(done.stdout)
    output = answer["output"]
    errors = [e for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        sys.exit("\n".join(e["formattedMessage"] for e in errors))
    return answer["version"], output["contracts"][SRC.name][CONTRACT]


def main() -> None:
    solc_dir = Path(os.environ.get("SOLC_DIR", "/tmp/solcbuild"))
    version, c = compile_source(solc_dir)
    if not version.startswith(SOLC_VERSION + "+"):
        sys.exit(f"expected solc {SOLC_VERSION}, found {version}")
    if c["evm"]["deployedBytecode"].get("immutableReferences"):
        # Runtime code with immutables is incomplete without its constructor.
        sys.exit("the token must not use immutables: its runtime code is placed at genesis")
    doc = {
        "contractName": CONTRACT,
        "source": "fixtures/evm/token/TestUSDC3009.sol",
        "compiler": "solc " + version,
        "settings": SETTINGS,
        "how": "scripts/make_eip3009_token.py (npm solc, standard JSON input)",
        "storageSlots": {v["label"]: int(v["slot"]) for v in c["storageLayout"]["storage"]},
        "abi": c["abi"],
        "bytecode": "0x" + c["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT} ({len(doc['deployedBytecode']) // 2 - 1} bytes of runtime code)")


if __name__ == "__main__":
    main()
