"""The prototypes' Python modules, one per prototype and named by its stem (``flash_attention``, ...).

Each holds its defaults, constants, documentation and keyword API, and calls its entry point in the
C++ core (``attention_proto._core.<stem>``), which validates every argument; the public functions are
re-exported from ``attention_proto``.
"""
