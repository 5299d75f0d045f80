"""The deterministic mutator: every input follows from the seed corpus and one ``random.Random``.

Havoc in the AFL manner, a few stacked edits per input, with edits that know what pinhole reads:

- bytes: bit flips, interesting bytes and 16/32-bit fields (0, max, lengths +-1), truncation, deleted,
  duplicated or repeated ranges, random bytes, splicing with another seed;
- text (SIP, SDP, YAML, JSON): repeated, dropped, swapped or borrowed lines (a header 1,000 times),
  numbers made huge or negative, separators and quotes inserted, line ends changed, long runs;
- documents (scenario YAML, trace JSON): a value anywhere in the tree replaced by a wrong type, an
  edge number or a long string, a key or an element dropped or duplicated; then dumped again;
- bundles (:mod:`fuzz.bundle`): datagrams dropped, repeated, reordered, moved to another link, cut
  short, or mutated one at a time as bytes or text.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Callable
from typing import Any

from fuzz import bundle

MAX_SIZE = 1 << 20
INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x03, 0x0A, 0x0D, 0x20, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING_INTS = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)
NUMBERS = (
    b"0",
    b"-1",
    b"-0",
    b"65535",
    b"65536",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"9" * 40,
    b"1e309",
    b"00000000000000000001",
    b"0x10",
    b"1.5",
    b"+1",
    b"\xd9\xa3",
    b"\xc2\xb2",
    b"1\xc2\xb2",
)
TOKENS = (
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"=",
    b"<",
    b">",
    b'"',
    b"\\",
    b"%",
    b"%00",
    b"[",
    b"]",
    b"/",
    b"@",
    b"?",
    b"*",
    b"{",
    b"}",
    b"#",
    b"&",
    b"!",
    b"\xc3\xa9",
    b"\xe2\x80\xa8",
    b"\xff",
    b"\xed\xa0\x80",
    b"..",
    b"::",
    b"-",
    b"'",
)
DOC_VALUES: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    2**31,
    2**63,
    2**64,
    10**40,
    1e308,
    float("nan"),
    "",
    "x",
    "x" * 5000,
    "0",
    "true",
    "null",
    "~",
    "-1",
    [],
    {},
    [None],
    {"": None},
    [[[]]],
    {"x": []},
    "1" * 400,
    "\u2028",
    "a:b",
    "\x00",
)
_NUMBER = re.compile(rb"\d+")
_WORD = re.compile(rb"[A-Za-z0-9_.+-]+")

Edit = Callable[[random.Random, bytearray, bytes], bytearray]
_UNPARSED = object()


# --------------------------------------------------------------------------- bytes


def _pos(rng: random.Random, data: bytearray, end: bool = False) -> int:
    return rng.randrange(len(data) + 1) if end else rng.randrange(len(data))


def _range(rng: random.Random, data: bytearray) -> tuple[int, int]:
    start = _pos(rng, data)
    return start, min(len(data), start + rng.choice((1, 2, 4, 8, 16, 64, 256, len(data))))


def flip_bit(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    if data:
        data[_pos(rng, data)] ^= 1 << rng.randrange(8)
    return data


def interesting_byte(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    if data:
        data[_pos(rng, data)] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.8 else rng.randrange(256)
    return data


def arith_byte(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    if data:
        at = _pos(rng, data)
        data[at] = (data[at] + rng.choice((-16, -2, -1, 1, 2, 16))) & 0xFF
    return data


def interesting_field(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    """A 16- or 32-bit length/count field set to an edge value (or to the input's own length +- 1)."""
    width = rng.choice((2, 4))
    if len(data) < width:
        return data
    at = rng.randrange(len(data) - width + 1)
    value = rng.choice(INTERESTING_INTS + (len(data), len(data) - at, len(data) + 1, len(data) - 1)) % (1 << 8 * width)
    data[at : at + width] = value.to_bytes(width, rng.choice(("big", "little")))
    return data


def truncate(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    return data[: _pos(rng, data, end=True)]


def delete_range(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    if data:
        start, end = _range(rng, data)
        del data[start:end]
    return data


def duplicate_range(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    if data:
        start, end = _range(rng, data)
        data[_pos(rng, data, end=True) : _pos(rng, data, end=True)] = data[start:end]
    return data


def repeat_range(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    """A range repeated many times in place: quadratic loops and deep nesting show up here."""
    if data:
        start, end = _range(rng, data)
        times = rng.choice((2, 8, 64, 1000))
        data[start:end] = bytes(data[start:end]) * min(times, MAX_SIZE // max(1, end - start))
    return data


def insert_random(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    at = _pos(rng, data, end=True)
    data[at:at] = rng.randbytes(rng.choice((1, 2, 4, 16, 64)))
    return data


def splice(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    """This input's head and another seed's tail, or a piece of the other seed inserted."""
    if not donor:
        return data
    if rng.random() < 0.5:
        return data[: _pos(rng, data, end=True)] + donor[rng.randrange(len(donor)) :]
    start = rng.randrange(len(donor))
    piece = donor[start : start + rng.choice((4, 16, 64, 512))]
    at = _pos(rng, data, end=True)
    data[at:at] = piece
    return data


BYTE_EDITS: tuple[Edit, ...] = (
    flip_bit,
    interesting_byte,
    arith_byte,
    interesting_field,
    interesting_field,
    truncate,
    delete_range,
    duplicate_range,
    repeat_range,
    insert_random,
    splice,
    splice,
)


# --------------------------------------------------------------------------- text


def _lines(data: bytearray) -> list[bytes]:
    return bytes(data).splitlines(keepends=True) or [b""]


def repeat_line(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    """A line (a SIP header, an SDP attribute, a YAML entry) repeated: twice, or a thousand times."""
    lines = _lines(data)
    i = rng.randrange(len(lines))
    line = lines[i] if lines[i].endswith(b"\n") else lines[i] + b"\r\n"
    lines[i:i] = [line] * rng.choice((1, 2, 10, 100, 1000))
    return bytearray(b"".join(lines))


def drop_line(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return bytearray(b"".join(lines))


def swap_lines(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return bytearray(b"".join(lines))


def borrow_line(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    """A line of another seed inserted here (an SDP line into a SIP header section, ...)."""
    lines, theirs = _lines(data), _lines(bytearray(donor))
    lines.insert(rng.randrange(len(lines) + 1), rng.choice(theirs))
    return bytearray(b"".join(lines))


def edit_number(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    """A number (a port, a Content-Length, a CSeq, a length) made huge, negative, zero, or odd-looking."""
    numbers = list(_NUMBER.finditer(data))
    if not numbers:
        return insert_token(rng, data, donor)
    match = rng.choice(numbers)
    data[match.start() : match.end()] = rng.choice(NUMBERS)
    return data


def insert_token(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    at = _pos(rng, data, end=True)
    data[at:at] = rng.choice(TOKENS) * rng.choice((1, 1, 1, 2, 50))
    return data


def replace_word(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    """A token replaced by one of another seed's (a method by a header name, an IP by a codec ...)."""
    ours, theirs = list(_WORD.finditer(data)), _WORD.findall(donor)
    if not ours or not theirs:
        return data
    match = rng.choice(ours)
    data[match.start() : match.end()] = rng.choice(theirs)
    return data


def line_ends(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    text = bytes(data)
    choice = rng.randrange(4)
    if choice == 0:
        return bytearray(text.replace(b"\r\n", b"\n"))
    if choice == 1:
        return bytearray(text.replace(b"\n", b"\r\n"))
    if choice == 2:
        return bytearray(text.replace(b"\r\n", b"\r\n ", 1))  # a folded (continuation) line
    return bytearray(text.rstrip(b"\r\n"))


def long_run(rng: random.Random, data: bytearray, donor: bytes) -> bytearray:
    at = _pos(rng, data, end=True)
    data[at:at] = rng.choice((b"A", b" ", b"9", b";", b"<", b"[", b"\\", b"%", b"-")) * rng.choice((300, 5000, 70000))
    return data


TEXT_EDITS: tuple[Edit, ...] = (
    repeat_line,
    drop_line,
    swap_lines,
    borrow_line,
    edit_number,
    edit_number,
    insert_token,
    insert_token,
    replace_word,
    line_ends,
    long_run,
)


def havoc(rng: random.Random, data: bytes, donor: bytes, *, text: bool) -> bytes:
    """One to six stacked edits; text edits two times in three for text inputs."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4, 6))):
        edits = TEXT_EDITS if text and rng.random() < 0.67 else BYTE_EDITS
        out = rng.choice(edits)(rng, out, donor)
        if len(out) > MAX_SIZE:
            del out[MAX_SIZE:]
    return bytes(out)


# --------------------------------------------------------------------------- documents


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """(container, key) of the values of a parsed document (JSON or YAML), the first 20,000."""
    out: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack and len(out) < 20_000:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            out.append((node, key))
            stack.append(value)
    return out


def edit_document(rng: random.Random, doc: Any) -> Any:
    """One value of the tree replaced, dropped, duplicated or wrapped (in place); returns the new root."""
    slots = _slots(doc)
    if not slots or rng.random() < 0.02:
        return copy.deepcopy(rng.choice(DOC_VALUES))
    node, key = rng.choice(slots)
    how = rng.randrange(5)
    if how == 0 and isinstance(node, dict):
        del node[key]
    elif how == 1 and isinstance(node, list):
        node.insert(key, copy.deepcopy(node[key]))
    elif how == 2:
        node[key] = [node[key]] if rng.random() < 0.5 else {"x": node[key]}
    elif how == 3 and isinstance(node, dict):
        node[rng.choice(("x", "", "0", "name", "null", f"{key}_"))] = copy.deepcopy(node[key])
    else:
        node[key] = copy.deepcopy(rng.choice(DOC_VALUES))
    return doc


# --------------------------------------------------------------------------- the mutator


class Mutator:
    """Inputs for one target: its seeds first, unchanged, then mutants of them.

    ``kind`` says which edits make sense: "binary", "text", "yaml", "json" or "bundle".
    """

    def __init__(self, seeds: list[bytes], kind: str) -> None:
        if not seeds:
            raise ValueError("a mutator needs at least one seed")
        self.seeds = seeds
        self.kind = kind
        self._docs: dict[int, Any] = {}

    def input(self, rng: random.Random, index: int) -> bytes:
        """The index-th input: a seed for the first len(seeds), a mutant of one after."""
        if index < len(self.seeds):
            return self.seeds[index]
        which = rng.randrange(len(self.seeds))
        return self.mutate(rng, self.seeds[which], which)

    def mutate(self, rng: random.Random, data: bytes, which: int | None = None) -> bytes:
        """A mutant of ``data`` (``which``: its seed index, to reuse the parsed document)."""
        donor = rng.choice(self.seeds)
        if self.kind == "bundle":
            return self._mutate_bundle(rng, data, donor)
        if self.kind in ("yaml", "json") and rng.random() < 0.5:
            mutant = self._mutate_document(rng, data, which)
            if mutant is not None:
                return mutant if rng.random() < 0.7 else havoc(rng, mutant, donor, text=True)
        return havoc(rng, data, donor, text=self.kind != "binary")

    def _mutate_document(self, rng: random.Random, data: bytes, which: int | None) -> bytes | None:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the mutator's parse need not be pinhole's
        loads: Callable[[bytes], Any] = json.loads if self.kind == "json" else lambda text: yaml.load(text, loader)
        if which in self._docs:
            doc = self._docs[which]
        else:
            try:
                doc = loads(data)
            except Exception:  # noqa: BLE001  PyYAML's constructors raise anything: then edit the text instead
                doc = _UNPARSED
            if which is not None:
                self._docs[which] = doc
        if doc is _UNPARSED:
            return None
        try:
            doc = copy.deepcopy(doc)
            for _ in range(rng.choice((1, 1, 2, 3))):
                doc = edit_document(rng, doc)
            if self.kind == "json":
                return json.dumps(doc, indent=rng.choice((None, 1))).encode()
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
            return yaml.dump(doc, Dumper=dumper, sort_keys=False, allow_unicode=True).encode()
        except (ValueError, TypeError, RecursionError, yaml.YAMLError):  # a tree too deep to copy or dump, say
            return None

    def _mutate_bundle(self, rng: random.Random, data: bytes, donor: bytes) -> bytes:
        run, chunks = bundle.split(data)
        _, theirs = bundle.split(donor)
        for _ in range(rng.choice((1, 1, 2, 3, 5))):
            how = rng.randrange(10)
            if not chunks or how == 0:
                chunks.insert(rng.randrange(len(chunks) + 1), rng.choice(theirs) if theirs else (0, b""))
            elif how == 1:
                i = rng.randrange(len(chunks))
                del chunks[i : i + rng.choice((1, 1, len(chunks)))]
            elif how == 2:
                i = rng.randrange(len(chunks))
                chunks[i:i] = [chunks[i]] * rng.choice((1, 2, 10))
            elif how == 3:
                i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks))
                chunks[i], chunks[j] = chunks[j], chunks[i]
            elif how == 4:
                i = rng.randrange(len(chunks))
                chunks[i] = (rng.randrange(256), chunks[i][1])
            elif how == 5:
                run = rng.randrange(256)
            else:
                i = rng.randrange(len(chunks))
                place, payload = chunks[i]
                other = rng.choice(theirs)[1] if theirs else b""
                text = payload[:1].isalpha()  # SIP is text, the rest starts with a binary byte
                chunks[i] = (place, havoc(rng, payload, other, text=text))
        return bundle.join(run, chunks)
