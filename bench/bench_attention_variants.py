#!/usr/bin/env python3
"""Attention variants (prototype 7): causal, ALiBi, softcap, RoPE separate and fused, GQA group sizes, each
relative to the base flash-attention kernel, side by side; error against FP64.

Same as `attention-proto bench attention_variants`; run with --help for the options.
"""
import sys

from attention_proto.benches.attention_variants import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
