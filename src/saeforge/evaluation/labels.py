"""Exact labels for every byte of Python source, from Python's own `tokenize` and `ast`.

`byte_labels(source)` gives a boolean matrix [n_bytes, n_tasks]: for each UTF-8 byte of the
source, which of `TASKS` holds there. The tasks (names are stable; `TASKS` lists them in order):

- `tok.*`: the byte's token type: name, keyword, number, string, operator, comment, newline,
  whitespace between tokens, indentation (a line's leading whitespace).
- `kw.*`: the byte is part of that keyword (`def`, `return`, `None`, …).
- `name.*`: the identifier is a builtin, `self`, ALL_CAPS, CamelCase, snake_case, a dunder, private.
- `str.*`: inside a string of that kind (docstring, f-string, bytes, raw, triple-quoted) or on its
  quote characters.
- `depth.*`, `bracket.*`: how many brackets are open (0, 1, 2, 3+) and the innermost kind.
- `indent.*`: the line's indentation level (0, 1, 2, 3+ INDENTs open).
- `ast.*`: the byte lies in an AST node of that kind (a call, an import, a decorator, an
  annotation, a comprehension, a subscript, a lambda, a comparison, …), or is the name of a
  defined function / class, an attribute's name, a keyword argument's name.

Token positions (tokenize: character columns) and node positions (ast: UTF-8 byte columns) are
both converted to byte offsets, so labels line up with a byte-level model's tokens exactly, and
with a BPE tokenizer's tokens through its character offsets (`token_labels`). A source that
`ast.parse` or `tokenize` refuses raises `NotPython`; a source with carriage returns is refused
too (tokenize and ast count its lines differently from the raw bytes).
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import re
import tokenize

import numpy as np

KEYWORDS = ("def", "class", "return", "if", "elif", "else", "for", "while", "in", "not", "and", "or", "is",
            "import", "from", "as", "None", "True", "False", "try", "except", "finally", "with", "lambda",
            "yield", "raise", "pass", "break", "continue", "assert", "del", "global")
AST_SPANS = {  # task name → node types whose whole span it marks
    "call": (ast.Call,), "import": (ast.Import, ast.ImportFrom), "lambda": (ast.Lambda,),
    "comprehension": (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp), "subscript": (ast.Subscript,),
    "compare": (ast.Compare,), "boolop": (ast.BoolOp,), "binop": (ast.BinOp,), "unaryop": (ast.UnaryOp,),
    "dict_display": (ast.Dict,), "list_display": (ast.List,), "tuple": (ast.Tuple,), "return_stmt": (ast.Return,),
    "raise_stmt": (ast.Raise,), "assert_stmt": (ast.Assert,), "assign_stmt": (ast.Assign, ast.AugAssign, ast.AnnAssign),
    "augassign": (ast.AugAssign,), "ifexp": (ast.IfExp,), "yield": (ast.Yield, ast.YieldFrom), "await": (ast.Await,),
    "starred": (ast.Starred,), "slice": (ast.Slice,), "attribute": (ast.Attribute,),
    "number_constant": (),  # filled by value type below
}
TASKS: tuple[str, ...] = (
    ("tok.name", "tok.keyword", "tok.number", "tok.string", "tok.op", "tok.comment", "tok.newline", "tok.space",
     "tok.indentation")
    + tuple(f"kw.{k}" for k in KEYWORDS)
    + ("name.builtin", "name.self", "name.upper", "name.camel", "name.snake", "name.dunder", "name.private")
    + ("str.quote", "str.docstring", "str.fstring", "str.bytes", "str.raw", "str.triple")
    + ("depth.0", "depth.1", "depth.2", "depth.3+", "bracket.paren", "bracket.square", "bracket.curly")
    + ("indent.0", "indent.1", "indent.2", "indent.3+")
    + tuple(f"ast.{k}" for k in AST_SPANS)
    + ("ast.decorator", "ast.annotation", "ast.arguments", "ast.def_name", "ast.class_name", "ast.attr_name",
       "ast.keyword_arg", "ast.condition", "ast.except_handler", "ast.with_items", "ast.for_target")
)
INDEX = {t: i for i, t in enumerate(TASKS)}
_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_")) - frozenset(keyword.kwlist)
_OPEN, _CLOSE = {"(": "paren", "[": "square", "{": "curly"}, {")", "]", "}"}


class NotPython(ValueError):
    """The text is not Python source that tokenize and ast both read."""


class _Positions:
    """(line, column) → byte offset, for tokenize's character columns and ast's byte columns."""

    def __init__(self, source: str):
        self.lines = source.split("\n")
        starts, at = [], 0
        for line in self.lines:
            starts.append(at)
            at += len(line.encode()) + 1
        self.starts = starts
        self.n_bytes = len(source.encode())

    def chars(self, row: int, col: int) -> int:  # tokenize: 1-based row, character column
        if row > len(self.lines):
            return self.n_bytes
        return self.starts[row - 1] + len(self.lines[row - 1][:col].encode())

    def bytes(self, row: int, col: int) -> int:  # ast: 1-based row, byte column
        return self.n_bytes if row > len(self.lines) else self.starts[row - 1] + col


def byte_labels(source: str) -> np.ndarray:
    """bool [n_bytes, len(TASKS)]: which task holds at each UTF-8 byte of `source` (see the module)."""
    if "\r" in source:
        raise NotPython("carriage returns (tokenize and ast count such lines differently from the bytes)")
    try:
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, ValueError, tokenize.TokenError, RecursionError, MemoryError) as e:
        raise NotPython(f"{type(e).__name__}: {e}") from None
    pos = _Positions(source)
    out = np.zeros((pos.n_bytes, len(TASKS)), dtype=bool)

    def mark(task: str, a: int, b: int) -> None:
        if b > a:
            out[a:b, INDEX[task]] = True

    _mark_tokens(tokens, pos, out, mark, source.encode())
    _mark_nodes(tree, tokens, pos, mark)
    return out


def _mark_tokens(tokens, pos: _Positions, out: np.ndarray, mark, source_bytes: bytes) -> None:
    covered = np.zeros(pos.n_bytes, dtype=bool)
    depth: list[str] = []  # open brackets, innermost last
    indent = 0
    depth_cols = [INDEX[t] for t in ("depth.0", "depth.1", "depth.2", "depth.3+")]
    kind_cols = {k: INDEX[f"bracket.{k}"] for k in ("paren", "square", "curly")}
    line_indent: dict[int, int] = {}
    prev_end = 0
    def at_depth(lo: int, hi: int) -> None:
        if hi > lo:
            out[lo:hi, depth_cols[min(len(depth), 3)]] = True
            if depth:
                out[lo:hi, kind_cols[depth[-1]]] = True

    for tok in tokens:
        a, b = pos.chars(*tok.start), pos.chars(*tok.end)
        t, s = tok.type, tok.string
        at_depth(prev_end, a)  # the bytes since the previous token
        if t == tokenize.OP and s in _CLOSE and depth:  # a bracket is at the depth outside it
            depth.pop()
        at_depth(a, b)
        if t == tokenize.OP and s in _OPEN:
            depth.append(_OPEN[s])
        prev_end = max(prev_end, b)
        covered[a:b] = True
        if t == tokenize.INDENT:
            indent += 1
        elif t == tokenize.DEDENT:
            indent -= 1
        line_indent.setdefault(tok.start[0], indent)
        if t == tokenize.NAME:
            _mark_name(s, a, b, mark)
        elif t == tokenize.NUMBER:
            mark("tok.number", a, b)
        elif t == tokenize.STRING:
            _mark_string(s, a, b, mark)
        elif t == tokenize.OP:
            mark("tok.op", a, b)
        elif t == tokenize.COMMENT:
            mark("tok.comment", a, b)
        elif t in (tokenize.NEWLINE, tokenize.NL):
            mark("tok.newline", a, b)
    for row, line in enumerate(pos.lines, 1):  # indentation: a line's leading whitespace; its level
        start = pos.starts[row - 1]
        lead = len(line) - len(line.lstrip(" \t\f"))
        if lead and line.strip():
            mark("tok.indentation", start, start + lead)
        level = min(line_indent.get(row, 0), 3)
        out[start:start + len(line.encode()), INDEX[f"indent.{level}" if level < 3 else "indent.3+"]] = True
    gaps = ~covered & ~out[:, INDEX["tok.indentation"]] & ~out[:, INDEX["tok.newline"]]
    newline = np.frombuffer(source_bytes, dtype=np.uint8) == ord("\n")  # (a line joined inside brackets)
    out[gaps & newline, INDEX["tok.newline"]] = True
    out[gaps & ~newline, INDEX["tok.space"]] = True


def _mark_name(s: str, a: int, b: int, mark) -> None:
    if keyword.iskeyword(s):
        mark("tok.keyword", a, b)
        if s in KEYWORDS:
            mark(f"kw.{s}", a, b)
        return
    mark("tok.name", a, b)
    if s in _BUILTINS:
        mark("name.builtin", a, b)
    if s in ("self", "cls"):
        mark("name.self", a, b)
    if s.startswith("__") and s.endswith("__") and len(s) > 4:
        mark("name.dunder", a, b)
    elif s.startswith("_"):
        mark("name.private", a, b)
    core = s.strip("_")
    if core.isupper() and len(core) > 1:
        mark("name.upper", a, b)
    elif core[:1].isupper() and not core.isupper() and "_" not in core:
        mark("name.camel", a, b)
    elif "_" in core and core.islower():
        mark("name.snake", a, b)


_PREFIX = re.compile(r"[A-Za-z]*")


def _mark_string(s: str, a: int, b: int, mark) -> None:
    mark("tok.string", a, b)
    prefix = _PREFIX.match(s).group(0).lower()
    body = s[len(prefix):]
    q = 3 if body[:3] in ('"""', "'''") else 1
    n_prefix = len(prefix)  # prefix and quotes are ASCII: one byte each
    mark("str.quote", a + n_prefix, a + n_prefix + q)
    mark("str.quote", b - q, b)
    for letter, task in (("f", "str.fstring"), ("b", "str.bytes"), ("r", "str.raw")):
        if letter in prefix:
            mark(task, a, b)
    if q == 3:
        mark("str.triple", a, b)


def _mark_nodes(tree: ast.AST, tokens, pos: _Positions, mark) -> None:
    def span(node) -> tuple[int, int]:
        return pos.bytes(node.lineno, node.col_offset), pos.bytes(node.end_lineno, node.end_col_offset)

    def name_after(node, word: str) -> None:
        """The NAME token following `word` (def / class) inside node's first line: the defined name."""
        a, _ = span(node)
        for tok in tokens:
            if tok.type == tokenize.NAME and tok.string == node.name and pos.chars(*tok.start) > a:
                mark(f"ast.{word}_name", pos.chars(*tok.start), pos.chars(*tok.end))
                return

    for node in ast.walk(tree):
        for task, kinds in AST_SPANS.items():
            if kinds and isinstance(node, kinds):
                mark(f"ast.{task}", *span(node))
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, complex)) \
                and not isinstance(node.value, bool):
            mark("ast.number_constant", *span(node))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for dec in node.decorator_list:
                a, b = span(dec)
                mark("ast.decorator", a - 1, b)  # with its "@"
            name_after(node, "class" if isinstance(node, ast.ClassDef) else "def")
            body = node.body[0] if node.body else None
            if isinstance(body, ast.Expr) and isinstance(body.value, ast.Constant) and isinstance(body.value.value, str):
                mark("str.docstring", *span(body.value))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.returns is not None:
                mark("ast.annotation", *span(node.returns))
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, (args.vararg, args.kwarg))]
            if every:
                lo = min(span(x)[0] for x in every)
                hi = max(span(x)[1] for x in every + [*args.defaults, *filter(None, args.kw_defaults)])
                mark("ast.arguments", lo, hi)
        if isinstance(node, ast.arg) and node.annotation is not None:
            mark("ast.annotation", *span(node.annotation))
        if isinstance(node, ast.AnnAssign):
            mark("ast.annotation", *span(node.annotation))
        if isinstance(node, ast.Attribute):
            a, b = span(node)
            mark("ast.attr_name", b - len(node.attr.encode()), b)
        if isinstance(node, ast.keyword) and node.arg is not None:
            a, _ = span(node)
            mark("ast.keyword_arg", a, a + len(node.arg.encode()))
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            mark("ast.condition", *span(node.test))
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            mark("ast.except_handler", *span(node.type))
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                mark("ast.with_items", *span(item.context_expr))
        if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            mark("ast.for_target", *span(node.target))
    if isinstance(tree, ast.Module) and tree.body:  # the module's docstring
        first = tree.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            mark("str.docstring", *span(first.value))


def token_labels(text: str, offsets: list[tuple[int, int]] | None = None) -> np.ndarray:
    """bool [n_tokens, len(TASKS)] for a document's tokens. `offsets`: each token's (start, end)
    character offsets in `text` (a fast HF tokenizer's `offset_mapping`); None for a byte-level
    model, whose tokens are the UTF-8 bytes. A token takes the labels of its last byte: what the
    model has read when it is at that token."""
    labels = byte_labels(text)
    if offsets is None:
        return labels
    char_to_byte = np.cumsum([0] + [len(c.encode()) for c in text])
    ends = np.array([char_to_byte[e] - 1 if e > s else -1 for s, e in offsets], dtype=np.int64)
    out = np.zeros((len(offsets), len(TASKS)), dtype=bool)
    ok = ends >= 0
    out[ok] = labels[ends[ok]]
    return out
