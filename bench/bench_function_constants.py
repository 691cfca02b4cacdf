#!/usr/bin/env python3
"""Function constants (prototype 4): the compile cost of 72 specialised flash-kernel variants (cold, warm,
binary archive) by strategy, and what specialisation buys in the kernel.

Same as `attention-proto bench function_constants`; run with --help for the options.
"""
import sys

from attention_proto.benches.function_constants import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
