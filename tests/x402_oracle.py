"""The official x402 SDK's facilitator verify, run offline: the test suite's oracle. The code
lives in verifier.x402_sdk_oracle because `railproof bench` runs it too (and the installed
package must not import from tests/)."""

from verifier.tools.x402_sdk_oracle import (  # noqa: F401
    FACILITATOR_ADDRESS,
    SDK_CLOCK_MODULES,
    StubSigner,
    make_facilitator,
    requirements_doc,
    sdk_clock,
    sdk_verify,
)
