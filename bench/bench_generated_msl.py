#!/usr/bin/env python3
"""Generated MSL (prototype 5, CubeCL / Slang / TileLang / tinygrad) against hand-written: numerics, the
static table and kernel times side by side.

Same as `attention-proto bench generated_msl`; run with --help for the options.
"""
import sys

from attention_proto.benches.generated_msl import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
