"""A small static analyser of MSL sources: what a kernel file asks of the GPU, counted from its text.

Prototype 5 compares generated MSL with hand-written MSL by these counts. They are lexical
heuristics over one file (comments stripped, template brackets told apart from comparisons), not a
compiler's analysis; each count is described in :data:`METRICS`. A helper function's counts are added
at every call site, so a kernel that calls an MMA helper 16 times counts 16 MMAs.
"""
from __future__ import annotations

import ast
import re
from collections import Counter

METRICS: dict[str, str] = {
    "kernels": "kernel functions in the file",
    "lines": "non-blank lines outside comments",
    "threadgroup_bytes": "bytes of statically sized threadgroup variables (dynamic [[threadgroup(n)]] not included)",
    "barriers": "threadgroup_barrier / simdgroup_barrier calls",
    "mma": "simdgroup_multiply(_accumulate) calls (8x8 matrix path)",
    "matrix_loads": "simdgroup_load calls",
    "matrix_stores": "simdgroup_store calls",
    "simd_ops": "simd_* / quad_* calls (shuffles, reductions, ballots)",
    "inner_loop_device_loads": "reads of device memory inside innermost loops",
    "int_divmod": "integer / and % (by an integer literal or an integer variable)",
    "bounds_checks": "comparisons in if / ?: / bool conditions, loop headers excluded",
    "half_uses": "half / half2..4 / bfloat* type uses",
    "fast_math": "fast:: calls",
    "precise_math": "precise:: calls",
    "function_constants": "[[function_constant(n)]] declarations",
    "runtime_scalars": "kernel parameters in the constant address space (runtime arguments)",
    "unroll_hints": "#pragma unroll / #pragma clang loop unroll",
    "buffer_args": "device / constant buffer parameters of the kernels",
}

# counts a helper adds at each of its call sites (the others once per calling function)
_PER_CALL = {"barriers", "mma", "matrix_loads", "matrix_stores", "simd_ops", "fast_math", "precise_math",
             "inner_loop_device_loads"}
_INT_TYPES = r"(?:u?int(?:8|16|32|64)_t|uint[234]?|int[234]?|ushort[234]?|short[234]?|ulong|long|size_t|uchar|char)"
_ASSIGN = re.compile(r"(?<![=!<>+\-*/%&|^])=(?!=)")


def strip_comments(source: str) -> str:
    """The source without // and /* */ comments (string literals are rare in MSL and kept as they are)."""
    source = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), source, flags=re.S)
    return re.sub(r"//[^\n]*", "", source)


def _strip_templates(text: str) -> str:
    """Removes template argument lists (`array<float, 8>`, `as_type<uint>`) so `<`/`>` left are comparisons."""
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"\b(\w+)\s*<(?!<)[^<>;(){}=]*(?<!-)>(?!>)(?=\s*[\w(*&:>,)\]{]|\s*$)", r"\1", text)
    return text


def _match(text: str, open_at: int) -> int:
    """Index of the bracket closing the one at `open_at`."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    opener, closer, depth = text[open_at], pairs[text[open_at]], 0
    for i in range(open_at, len(text)):
        depth += (text[i] == opener) - (text[i] == closer)
        if depth == 0:
            return i
    return len(text) - 1


def _functions(text: str) -> dict[str, tuple[bool, str, str]]:
    """name -> (is a kernel, parameter text, body) of every function definition."""
    found = {}
    for m in re.finditer(r"\b(\w+)\s*\(", text):
        name = m.group(1)
        if name in {"if", "for", "while", "switch", "return", "sizeof"}:
            continue
        close = _match(text, m.end() - 1)
        after = re.match(r"\s*(?:const\s*)?\{", text[close + 1:])
        head = text[max(0, text.rfind(";", 0, m.start()), text.rfind("}", 0, m.start())):m.start()]
        if after is None or re.search(r"[=(]", re.sub(r"\[\[.*?\]\]", "", head)):
            continue
        start = close + 1 + after.end()
        found[name] = ("kernel" in head, text[m.end():close], text[start:_match(text, start - 1)])
    return found


def _loops(body: str) -> list[tuple[str, str]]:
    """(header, body) of every for / while loop in `body`."""
    loops = []
    for m in re.finditer(r"\b(for|while)\s*\(", body):
        close = _match(body, m.end() - 1)
        rest = body[close + 1:]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            start = close + 1 + (len(rest) - len(stripped))
            loops.append((body[m.end():close], body[start + 1:_match(body, start)]))
        elif not stripped.startswith(";"):  # a single-statement loop
            loops.append((body[m.end():close], stripped[:stripped.find(";") + 1]))
    return loops


def _device_loads(code: str, pointers: set[str]) -> int:
    count = 0
    for statement in code.split(";"):
        parts = _ASSIGN.split(statement, maxsplit=1)
        rhs = parts[-1] if len(parts) == 2 else statement
        if len(parts) == 2 and re.search(r"\b(?:device|const|auto)\b", parts[0]) is None:
            lhs = parts[0]  # a store's address arithmetic may read too, through [ ] inside the target
            rhs += " " + lhs[lhs.find("[") + 1:] if "[" in lhs else ""
        count += len(re.findall(r"\*\s*\(\s*\(\s*device\b", rhs))
        for p in pointers:
            count += len(re.findall(rf"(?<![&\w])\b{p}\s*\[", rhs)) + len(re.findall(rf"(?<![\w)\]])\*\s*{p}\b", rhs))
    return count


def _direct(body: str, params: str, text: str) -> Counter[str]:
    c: Counter[str] = Counter()
    c["barriers"] = len(re.findall(r"\b(?:threadgroup|simdgroup)_barrier\s*\(", body))
    c["mma"] = len(re.findall(r"\bsimdgroup_multiply(?:_accumulate)?\s*\(", body))
    c["matrix_loads"] = len(re.findall(r"\bsimdgroup_load\s*\(", body))
    c["matrix_stores"] = len(re.findall(r"\bsimdgroup_store\s*\(", body))
    c["simd_ops"] = len(re.findall(r"\b(?:simd|quad)_\w+\s*\(", body))
    c["fast_math"] = len(re.findall(r"\bfast::\w+\s*\(", body))
    c["precise_math"] = len(re.findall(r"\bprecise::\w+\s*\(", body))
    c["half_uses"] = len(re.findall(r"\b(?:half|bfloat)[234]?(?:x[248])?\b|simdgroup_(?:half|bfloat)8x8", params + body))
    pointers = set(re.findall(r"\bdevice\b[^,;(){}=]*?[*&]\s*(?:const\s+)?(\w+)", text + params + body))
    c["inner_loop_device_loads"] = sum(_device_loads(b, pointers) for _, b in _loops(body)
                                       if not re.search(r"\b(?:for|while)\s*\(", b))
    ints = set(re.findall(rf"\b{_INT_TYPES}\s+(?:const\s+)?(\w+)", text + params + body))
    plain = _strip_templates(re.sub(r"\b(?:for|while)\s*\((?:[^()]|\([^()]*\))*\)", "", body))
    operand = rf"(?:\d+[uU]?\b(?!\.)|(?:{'|'.join(map(re.escape, ints)) or '$^'})\b)"
    c["int_divmod"] = len(re.findall(rf"(?<![/*])[/%]\s*\(?\s*{operand}", plain)) + \
        len(re.findall(rf"\b(?:{'|'.join(map(re.escape, ints)) or '$^'})\s*[/%](?![/*=])", plain)) - \
        len(re.findall(rf"\b(?:{'|'.join(map(re.escape, ints)) or '$^'})\s*[/%]\s*\(?\s*{operand}", plain))
    conditions = re.findall(r"\bif\s*\(((?:[^()]|\([^()]*\))*)\)", plain) + \
        re.findall(r"([^;{}?:]*)\?", plain) + re.findall(r"\bbool\b[^;=]*=([^;]*);", plain)
    c["bounds_checks"] = sum(len(re.findall(r"(?<![<>\-])(?:<=?|>=?)(?![<>])", cond)) for cond in conditions)
    return c


def analyse(source: str) -> dict[str, int]:
    """The counts of :data:`METRICS` for one MSL file (all its kernels, helpers counted at each call)."""
    text = strip_comments(source)
    functions = _functions(text)
    direct = {name: _direct(body, params, text) for name, (_, params, body) in functions.items()}

    memo: dict[str, Counter[str]] = {}

    def total(name: str, calling: frozenset[str] = frozenset()) -> Counter[str]:
        # Each function once (MSL has no recursion; `calling` only guards against a misparse): walking
        # every callee at every depth was exponential in the number of helpers.
        if name not in memo:
            counts = Counter(direct[name])
            for callee in functions:
                calls = 0 if callee == name or callee in calling else \
                    len(re.findall(rf"\b{callee}\s*\(", functions[name][2]))
                if calls:
                    for key, value in total(callee, calling | {name}).items():
                        counts[key] += (calls if key in _PER_CALL else 1) * value
            memo[name] = counts
        return memo[name]

    result: Counter[str] = Counter()
    kernels = [n for n, (is_kernel, _, _) in functions.items() if is_kernel]
    for name in kernels:
        result.update(total(name))
        params = functions[name][1]
        result["buffer_args"] += len(re.findall(r"\b(?:device|constant)\b[^,]*[*&]", params))
        result["runtime_scalars"] += len(re.findall(r"\bconstant\b[^,]*[*&]", params))
    result["kernels"] = len(kernels)
    result["lines"] = sum(1 for line in text.splitlines() if line.strip())
    result["function_constants"] = len(re.findall(r"\[\[\s*function_constant\s*\(", text))
    result["unroll_hints"] = len(re.findall(r"#\s*pragma\s+(?:clang\s+loop\s+)?unroll", text)) + \
        len(re.findall(r"\[\[\s*unroll", text))
    result["threadgroup_bytes"] = threadgroup_bytes(text)
    return {key: int(result.get(key, 0)) for key in METRICS}


_SIZES = {"char": 1, "uchar": 1, "bool": 1, "short": 2, "ushort": 2, "half": 2, "bfloat": 2, "int": 4, "uint": 4,
          "float": 4, "long": 8, "ulong": 8, "int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2, "int32_t": 4,
          "uint32_t": 4, "int64_t": 8, "uint64_t": 8}


def _type_bytes(type_text: str) -> int:
    t = re.sub(r"\b(?:const|volatile|metal::)\b", "", type_text).strip()
    if m := re.fullmatch(r"array\s*<\s*(.+)\s*,\s*(?:int\()?\s*(\d+)[uU]?\s*\)?\s*>", t):
        return _type_bytes(m.group(1)) * int(m.group(2))
    if m := re.fullmatch(r"(\w+?)([234])", t):
        n = int(m.group(2))
        return _SIZES.get(m.group(1), 4) * (4 if n == 3 else n)
    return _SIZES.get(t, 4)


def threadgroup_bytes(text: str) -> int:
    """Bytes of the statically sized threadgroup variables declared in `text` (comments stripped)."""
    total = 0
    for m in re.finditer(r"\bthreadgroup\s+(?:__attribute__\(\(aligned\(\d+\)\)\)\s+)?([\w:]+)\s*", text):
        type_text, end = m.group(1), m.end()
        if text.startswith("<", end):  # template arguments, nested ones included
            depth, i = 0, end
            while i < len(text):
                depth += (text[i] == "<") - (text[i] == ">")
                if depth == 0:
                    break
                i += 1
            type_text, end = text[m.start(1):i + 1], i + 1
        decl = re.match(r"\s*(\w+)\s*((?:\[[^\]]+\]\s*)*);", text[end:])
        if decl is None:  # a pointer, a reference, a parameter, a cast
            continue
        count = 1
        for dim in re.findall(r"\[([^\]]+)\]", decl.group(2)):
            count *= _eval_dim(dim, text)
        total += _type_bytes(type_text) * count
    return total


def _eval_dim(dim: str, text: str) -> int:
    """An array size: a literal, or constants defined in the file (`constant constexpr uint TILE = 32;`)."""
    names = dict(re.findall(r"\b(\w+)\s*=\s*([\d+*/ ()uU]+);", text))
    expr = dim
    for _ in range(4):
        expr = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: f"({names.get(m.group(0), '0')})", expr)
    try:
        return int(_arith(ast.parse(re.sub(r"(\d)[uU]\b", r"\1", expr), mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError):
        return 0


def _arith(node: ast.AST) -> int:
    """Integer + - * / << of literals only."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp):
        a, b = _arith(node.left), _arith(node.right)
        ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b, ast.LShift: a << b if b < 64 else 0,
               ast.Div: a // b if b else 0, ast.FloorDiv: a // b if b else 0}
        if type(node.op) in ops:
            return ops[type(node.op)]
    raise ValueError("not an integer expression")
