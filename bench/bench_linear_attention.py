#!/usr/bin/env python3
"""Linear attention (prototype 6, FLA's chunk_h / chunk_o): chunk sizes, memory, chunked vs recurrent, error,
crossover against flash attention.

Same as `attention-proto bench linear_attention`; run with --help for the options.
"""
import sys

from attention_proto.benches.linear_attention import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
