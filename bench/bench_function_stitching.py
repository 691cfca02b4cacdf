#!/usr/bin/env python3
"""User score functions in the attention inner loop (prototype 2): inline, linked, table and stitched modifiers,
their kernel time relative to inline, their build time, what Metal refuses, the recommendation for the trait.

Same as `attention-proto bench function_stitching`; run with --help for the options.
"""
import sys

from attention_proto.benches.function_stitching import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
