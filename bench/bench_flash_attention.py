#!/usr/bin/env python3
"""Flash attention forward (prototype 1): tile sweep and TFLOP/s baseline.

Same as `attention-proto bench flash_attention`; run with --help for the options.
"""
import sys

from attention_proto.benches.flash_attention import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
