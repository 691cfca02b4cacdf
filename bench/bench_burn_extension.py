#!/usr/bin/env python3
"""Burn extension trait (prototype 8, rust/burn_extension): build cost, the extension vs Burn's own attention
op on the Flex CPU backend (forward and gradients), Burn's op on its fallback cases, agreement with the MSL kernel.

Same as `attention-proto bench burn_extension`; run with --help for the options.
"""
import sys

from attention_proto.benches.burn_extension import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
