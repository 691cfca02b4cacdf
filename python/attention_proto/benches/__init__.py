"""Prototype benches: each module here is one prototype's bench, named by the prototype's stem
(``flash_attention``, ``paged_attention``, ...), with ``main(argv: list[str]) -> int``.

``attention-proto bench <proto> [--sweep] [--quick] [--backend NAME] [--findings PATH] [--out DIR]``
imports ``attention_proto.benches.<proto>`` and calls its ``main`` with those options (and anything
after ``--``). A bench parses them with ``attention_proto.bench.parse_bench_args``, prints its tables,
saves tables and plots under ``--out`` (default ``<findings dir>/<proto>``, where ``attention-proto
report`` finds them) and emits its findings with ``attention_proto.kb.emit_many``, each carrying the
device it ran on. Modules whose name starts with ``_`` are not benches.
"""
