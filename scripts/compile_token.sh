#!/usr/bin/env bash
# Compile fixtures/evm/token/TestUSDC.sol into fixtures/evm/token/TestUSDC.json (ABI + creation
# bytecode) with the npm `solc` compiler (solcjs: runs offline, no binary download).
#
# The compiler is installed in a scratch directory outside the repository, never as a
# project dependency:
#     SOLC_DIR=/tmp/solcbuild; mkdir -p $SOLC_DIR && (cd $SOLC_DIR && npm install solc@0.8.37)
#     scripts/compile_token.sh            # uses $SOLC_DIR (default /tmp/solcbuild)
#
# evmVersion is pinned to "cancun" so the bytecode runs on py-evm (eth-tester) and on any
# current node; the optimizer is on with the usual 200 runs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SOLC_DIR="${SOLC_DIR:-/tmp/solcbuild}"
SRC="$ROOT/fixtures/evm/token/TestUSDC.sol"
OUT="$ROOT/fixtures/evm/token/TestUSDC.json"

NODE_PATH="$SOLC_DIR/node_modules" node - "$SRC" "$OUT" <<'JS'
const fs = require("fs");
const solc = require("solc");
const [src, out] = process.argv.slice(2);
const input = {
  language: "Solidity",
  sources: { "TestUSDC.sol": { content: fs.readFileSync(src, "utf8") } },
  settings: {
    evmVersion: "cancun",
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const res = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (res.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const c = res.contracts["TestUSDC.sol"].TestUSDC;
const doc = {
  contractName: "TestUSDC",
  source: "fixtures/evm/token/TestUSDC.sol",
  compiler: "solc " + solc.version(),
  settings: { evmVersion: "cancun", optimizer: { enabled: true, runs: 200 } },
  abi: c.abi,
  bytecode: "0x" + c.evm.bytecode.object,
};
fs.writeFileSync(out, JSON.stringify(doc, null, 1) + "\n");
console.log("wrote " + out + " (" + c.evm.bytecode.object.length / 2 + " bytes)");
JS
