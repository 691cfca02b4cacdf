#!/usr/bin/env python3
"""PagedAttention decode (prototype 3): V1 capacity, V1/V2 crossover, partitions, block sizes, layouts, paging cost.

Same as `attention-proto bench paged_attention`; run with --help for the options.
"""
import sys

from attention_proto.benches.paged_attention import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
