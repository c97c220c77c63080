#!/usr/bin/env python3
"""Check that stampede's src/ modules respect the layering in src/lib.rs.

Every file under src/ (except main.rs, lib.rs and src/bin/) belongs to a
top-level module: src/api.rs -> api, src/shard/rooms.rs -> shard. Each
reference it makes to another top-level module -- `crate::X`, `$crate::X`,
grouped `use crate::{X, Y::z}` (nested braces too), or a `super::` chain
that climbs out of its own module to the crate root -- is an edge. An edge is
allowed when it points to a lower layer, or sideways to a module listed in
SAME_LAYER_ALLOWED; anything else (up, or sideways not listed) is forbidden,
as is naming a module that is not in LAYERS. Comments (`//`, `///`, `//!`,
nested `/* */`), string, byte-string, raw-string and char literals are skipped.

Usage:
    scripts/check-layers.py [--src DIR] [--listing-only]

Prints, per module, the top-level modules it names, then every forbidden edge
as file:line. Exit status 1 if any edge is forbidden or names an unknown
module, 0 otherwise; with --listing-only, prints only the listing and exits 0.
Python 3 standard library only.
"""

import argparse
import os
import sys
from pathlib import Path

# ---------------------------------------------------------------------------
# The layer table (keep in step with the `# Layout` doc in src/lib.rs).
# Lowest layer first. A module may name any module of a LOWER layer; within
# its own layer it may name only the modules listed for it in
# SAME_LAYER_ALLOWED (none, today); a HIGHER layer never. The binary
# (src/main.rs) is not checked: it may name anything.
# ---------------------------------------------------------------------------
LAYERS = [
    (1, ["config", "clock", "stomp", "ws", "http", "rate", "metrics",
         "capacity", "tls"]),                                # foundations
    (2, ["message", "room", "auth"]),                 # message types, who a client is
    (3, ["store", "index", "out", "push", "cluster"]),  # parts that hold messages; Redis
    (4, ["session", "api"]),                          # protocol logic
    (5, ["conn"]),                                    # a connection
    (6, ["shard"]),                                   # one pinned executor
    (7, ["server", "scrape"]),                        # start-up; the metrics thread
    (8, ["fuzzing"]),                                 # fuzz entry points only
]

# Same-layer edges that are allowed: module -> modules of its own layer it may
# name. Every same-layer edge not listed here is forbidden.
SAME_LAYER_ALLOWED = {
    # layer 1: config, clock, stomp, ws, http, rate, metrics, capacity, tls name
    # nothing of the crate.
    # layer 2: message, room and auth do not name each other.
    # layer 3: store, index, out do not name each other; push reads the
    # devices from the store and, in cluster mode, who is online on other
    # nodes from the cluster's presence.
    "push": {"store", "cluster"},
    # layer 4: session and api do not name each other.
    # layer 7: server starts the scrape thread.
    "server": {"scrape"},
}

LAYER_OF = {m: n for n, mods in LAYERS for m in mods}
ORDER = [m for _, mods in LAYERS for m in mods]


# ---------------------------------------------------------------------------
# Lexer: Rust source -> tokens (kind, text, line), without comments/literals.
# kinds: "id" (identifier, keyword, or number), "::", "p" (other punctuation).
# ---------------------------------------------------------------------------
def _is_id_start(c):
    return c == "_" or c.isalpha()


def _is_id_char(c):
    return c == "_" or c.isalnum()


class LexError(Exception):
    pass


def tokenize(src):
    toks = []
    i, n, line = 0, len(src), 1

    def skip_quoted(j, quote):
        """j is just past the opening quote; return index past the closing one."""
        nonlocal line
        while j < n:
            c = src[j]
            if c == "\\":
                if j + 1 < n and src[j + 1] == "\n":
                    line += 1
                j += 2
                continue
            if c == "\n":
                line += 1
            elif c == quote:
                return j + 1
            j += 1
        raise LexError("unterminated literal")

    def skip_raw(j):
        """j is at the first '#' or '"' after r/br/cr; return index past the end."""
        nonlocal line
        hashes = 0
        while j < n and src[j] == "#":
            hashes += 1
            j += 1
        assert src[j] == '"'
        end = '"' + "#" * hashes
        k = src.find(end, j + 1)
        if k < 0:
            raise LexError("unterminated raw string")
        line += src.count("\n", j, k)
        return k + len(end)

    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif src.startswith("//", i):  # line comment, incl. /// and //!
            k = src.find("\n", i)
            i = n if k < 0 else k
        elif src.startswith("/*", i):  # block comment; Rust nests them
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if src[i] == "\n":
                        line += 1
                    i += 1
            if depth:
                raise LexError("unterminated block comment")
        elif c == '"':
            i = skip_quoted(i + 1, '"')
        elif c == "'":
            # char literal ('a', '\n', '\u{..}', '"') or a lifetime / label ('a)
            if i + 1 < n and src[i + 1] == "\\":
                i = skip_quoted(i + 1, "'")
            elif i + 2 < n and src[i + 2] == "'" and src[i + 1] != "\n":
                i += 3
            else:
                i += 1  # lifetime: the identifier after it lexes on its own
        elif _is_id_start(c):
            j = i + 1
            while j < n and _is_id_char(src[j]):
                j += 1
            word = src[i:j]
            if word in ("r", "br", "cr") and j < n and src[j] in '"#':
                k = j
                while k < n and src[k] == "#":
                    k += 1
                if k < n and src[k] == '"':  # raw (byte/C) string
                    i = skip_raw(j)
                    continue
                if word == "r" and src[j] == "#" and j + 1 < n and _is_id_start(src[j + 1]):
                    k = j + 2  # raw identifier r#name
                    while k < n and _is_id_char(src[k]):
                        k += 1
                    toks.append(("id", src[j + 1:k], line))
                    i = k
                    continue
            if word in ("b", "c") and j < n and src[j] == '"':
                i = skip_quoted(j + 1, '"')  # byte / C string
                continue
            if word == "b" and j < n and src[j] == "'":
                # byte char b'x' / b'\n'
                if j + 1 < n and src[j + 1] == "\\":
                    i = skip_quoted(j + 1, "'")
                else:
                    i = j + 3
                continue
            toks.append(("id", word, line))
            i = j
        elif c.isdigit():
            j = i + 1
            while j < n and _is_id_char(src[j]):
                j += 1
            toks.append(("id", src[i:j], line))
            i = j
        elif src.startswith("::", i):
            toks.append(("::", "::", line))
            i += 2
        else:
            toks.append(("p", c, line))
            i += 1
    return toks


# ---------------------------------------------------------------------------
# Reference finder.
# ---------------------------------------------------------------------------
def module_path_of(rel):
    """src-relative path -> module path: shard/rooms.rs -> [shard, rooms]."""
    parts = list(rel.parts)
    parts[-1] = parts[-1][:-3]  # strip .rs
    if parts[-1] == "mod":
        parts.pop()
    return parts


def _group_heads(toks, i):
    """toks[i] is '{' of a use group; return ([(name, line)], index past '}').

    name is the first segment of each element of the group (recursing into a
    bare nested group `{a, {b, c}}`)."""
    heads = []
    i += 1
    expect_head = True
    while i < len(toks):
        kind, text, line = toks[i]
        if text == "}" and kind == "p":
            return heads, i + 1
        if text == "," and kind == "p":
            expect_head = True
            i += 1
            continue
        if expect_head:
            expect_head = False
            if text == "{" and kind == "p":
                sub, i = _group_heads(toks, i)
                heads.extend(sub)
                continue
            heads.append((text, line))
            i += 1
            continue
        if text == "{" and kind == "p":  # a deeper group: a::{b, c}
            _, i = _group_heads(toks, i)
            continue
        i += 1
    return heads, i


def _heads_at(toks, i):
    """toks[i] follows `<crate root>::`; return [(name, line)] it names."""
    if i >= len(toks):
        return []
    kind, text, line = toks[i]
    if kind == "p" and text == "{":
        return _group_heads(toks, i)[0]
    return [(text, line)]  # an identifier, or '*' / 'self' (flagged as unknown)


def find_refs(src, modpath):
    """Yield (name, line) for each top-level module that src names.

    modpath is the file's module path; names of its own top-level module
    (modpath[0]) are yielded too and dropped by the caller."""
    toks = tokenize(src)
    refs = []
    depth = 0
    inline = []  # stack of (mod name, brace depth it opened at)
    for i, (kind, text, line) in enumerate(toks):
        if kind == "p":
            if text == "{":
                if (i >= 2 and toks[i - 1][0] == "id" and toks[i - 2][1] == "mod"
                        and toks[i - 2][0] == "id"):
                    inline.append((toks[i - 1][1], depth))
                depth += 1
            elif text == "}":
                depth -= 1
                if inline and inline[-1][1] == depth:
                    inline.pop()
            continue
        if kind != "id":
            continue
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if nxt is None or nxt[0] != "::":
            continue
        prev = toks[i - 1] if i else None
        if prev is not None and prev[0] == "::":
            continue  # a later segment of some path, e.g. foo::crate (invalid anyway)
        if text == "crate":
            # `crate::` or macro `$crate::`: the next segment is a top-level module
            refs.extend(_heads_at(toks, i + 2))
        elif text == "super":
            # climb: super::super::... relative to the current (inline) module
            here = modpath + [m for m, _ in inline]
            j, ups = i, 0
            while (j + 1 < len(toks) and toks[j][1] == "super" and toks[j][0] == "id"
                   and toks[j + 1][0] == "::"):
                ups += 1
                j += 2
            left = len(here) - ups
            if left == 0:  # climbed to the crate root: toks[j] is a top-level module
                refs.extend(_heads_at(toks, j))
            # left >= 1: still inside modpath[0], a module's own business;
            # left < 0: not valid Rust, the compiler reports it.
    return refs


def collect(src_dir):
    """Return (edges, files_by_module, bad_files).

    edges: list of (module, target, shown_file, line); files_by_module: shown paths."""
    edges, files, bad = [], {}, []
    for path in sorted(src_dir.rglob("*.rs")):
        rel = path.relative_to(src_dir)
        if rel.parts in (("main.rs",), ("lib.rs",)) or rel.parts[0] == "bin":
            continue  # the binary / crate root: may name anything
        modpath = module_path_of(rel)
        top = modpath[0]
        try:  # as the user would type it: relative to the cwd when below it
            shown = str(path.relative_to(Path.cwd().resolve()))
        except ValueError:
            shown = str(path)
        files.setdefault(top, []).append(shown)
        try:
            text = path.read_text(encoding="utf-8")
            refs = find_refs(text, modpath)
        except (OSError, UnicodeDecodeError, LexError) as e:
            bad.append((shown, str(e)))
            continue
        seen = set()
        for name, line in refs:
            if name == top or (name, line) in seen:
                continue
            seen.add((name, line))
            edges.append((top, name, shown, line))
    return edges, files, bad


def verdict(src_mod, target):
    """None if the edge is allowed, else a reason."""
    if src_mod not in LAYER_OF:
        return "module `%s` is not in the layer table" % src_mod
    if target in ("*", "self"):
        return "`crate::%s` names the crate root itself, not a module" % (
            "*" if target == "*" else "{self}")
    if target not in LAYER_OF:
        return "`crate::%s` is not a module in the layer table" % target
    a, b = LAYER_OF[src_mod], LAYER_OF[target]
    if b < a:
        return None
    if b == a:
        if target in SAME_LAYER_ALLOWED.get(src_mod, ()):
            return None
        return "sideways: %s (layer %d) -> %s (layer %d), not allowed within the layer" % (
            src_mod, a, target, b)
    return "UP: %s (layer %d) -> %s (layer %d)" % (src_mod, a, target, b)


def main():
    default_src = Path(__file__).resolve().parent.parent / "src"
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=default_src,
                    help="the crate's src directory (default: %(default)s)")
    ap.add_argument("--listing-only", action="store_true",
                    help="print the per-module listing only and exit 0")
    args = ap.parse_args()
    src_dir = args.src.resolve()
    if not src_dir.is_dir():
        print("check-layers: no such directory: %s" % args.src, file=sys.stderr)
        return 2

    edges, files, bad = collect(src_dir)

    names = {}
    for mod, target, _, _ in edges:
        names.setdefault(mod, set()).add(target)
    mods = ORDER + sorted(m for m in set(files) | set(names) if m not in LAYER_OF)
    width = max(len(m) for m in mods)
    print("crate:: modules each module names (modules in layer order, lowest first):")
    for m in mods:
        if m not in files:
            listed = "(no source files)"
        else:
            listed = ", ".join(sorted(names.get(m, ()))) or "(nothing)"
        print("%-*s -> %s" % (width, m, listed))

    if args.listing_only:
        return 0

    problems = []
    for m in sorted(files):
        if m not in LAYER_OF:
            problems.append("%s: module `%s` is not in the layer table" % (
                ", ".join(files[m]), m))
    for mod, target, shown, line in edges:
        if mod not in LAYER_OF:
            continue  # reported once above
        why = verdict(mod, target)
        if why:
            problems.append("%s:%d: %s" % (shown, line, why))
    for shown, err in bad:
        problems.append("%s: could not read/lex: %s" % (shown, err))

    print()
    if problems:
        print("Forbidden edges (%d):" % len(problems))
        for p in problems:
            print("  " + p)
        return 1
    print("No forbidden edges (%d crate:: references in %d files checked)." % (
        len(edges), sum(len(v) for v in files.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
