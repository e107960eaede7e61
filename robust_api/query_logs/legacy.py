"""Import of the predecessor's query logs (microsoft/denoised-smoothing, ``vision_api/``).

The predecessor pickled, per image ``i``, a file ``pred_hist_<i>.pkl`` holding
``{"ground_truth": [clean_response], "pred": [noisy_response, ...]}``: one raw API answer on
the clean image and N0 + n answers on independent Gaussian noisy copies (the first N0 chose
the class, the other n estimated its probability). Its certificates went to a TSV
``log.txt``. This module turns the pickles into robust_api query-log calls (one ``predict``
call for the clean answer, one ``certify`` call for the noisy ones) and reads the TSVs, so
the old experiments can be re-certified and compared offline.

Pickles can run code when loaded. They are read here by :class:`RestrictedUnpickler`,
which builds plain data only (dict, list, tuple, OrderedDict, str, bytes, int, float,
bool, None) and refuses every other global or persistent id *before* anything is called.

What the pickles do not record is supplied by the caller: the API (``api=``), the noise
level (``noise_sd=``), N0, α and the denoiser's name. The noise was unseeded, so the
imported calls carry ``seed=0`` and ``params["seed"] = "unrecorded"``.
"""

from __future__ import annotations

import base64
import codecs
import decimal
import hashlib
import io
import json
import logging
import math
import os
import pickle
import pickletools
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import (
    InvalidInputError, InvalidParameterError, LogAccessError, LogIntegrityError, LogMismatchError, NotAQueryLogError, ProviderResponseError,
    UnsafePickleError,
)
from ..pricing import price_per_query
from ..providers.cloud import NO_LABEL
from ..validation import check_alpha, check_noise_sd, check_sample_count
from .exchange import export_jsonl, export_parquet, import_jsonl, import_parquet
from .records import CallHeader, CallLog, QueryRecord, dumps_raw
from .store import MemoryQueryLog, QueryLog, open_store

__all__ = [
    "LEGACY_APIS",
    "LEGACY_NO_LABEL",
    "LEGACY_SOURCE",
    "MAX_PICKLE_BYTES",
    "MAX_PICKLE_OPCODES",
    "MAX_TSV_BYTES",
    "LegacyTSVRow",
    "RestrictedUnpickler",
    "call_from_answers",
    "import_legacy",
    "legacy_label",
    "load_legacy_pickle",
    "read_legacy_tsv",
]

logger = logging.getLogger(__name__)

#: The APIs the predecessor queried, i.e. the response shapes this importer understands.
LEGACY_APIS = ("azure", "google", "aws", "clarifai")

#: Where imported calls come from (``params["imported_from"]``).
LEGACY_SOURCE = "microsoft/denoised-smoothing"

#: The predecessor's class of an empty answer. robust_api uses ``NO_LABEL`` instead; TSV
#: files written by the predecessor still contain this string (read_legacy_tsv keeps it).
LEGACY_NO_LABEL = "None"

#: Largest pickle :func:`load_legacy_pickle` reads (512 MiB); one image's log is ~100 KB.
MAX_PICKLE_BYTES = 512 * 2**20

#: Most opcodes one pickle may hold (each builds or moves at most one value); one image's log
#: of 120 answers holds ~10,000, and 5,000,000 bound the time a file can take to a few seconds.
MAX_PICKLE_OPCODES = 5_000_000

#: Largest predecessor TSV (``log.txt``) :func:`read_legacy_tsv` reads (256 MiB).
MAX_TSV_BYTES = 256 * 2**20

_MAX_DEPTH = 100
_MIN_NODE_CAP = 1_000_000
#: Keys of one dict that may share a hash value. Distinct honest keys practically never do
#: (ints -1 and -2 are the classic pair); a pickle built for hash collisions (ints
#: k·(2⁶¹ − 1), floats 2.0**(61·k) all hash alike on 64-bit CPython) needs thousands, and
#: inserting them would take quadratic time.
_MAX_SAME_HASH = 8
_MAX_DICT_KEYS = 100_000
#: Dict keys a plain-data pickle may use: scalars only (a tuple key is hashed recursively,
#: and a deeply nested one would overflow the C stack).
_KEY_TYPES = (str, int, float, bool, type(None))
#: Largest integer, in bytes (LONG4), the unpickler decodes: 1024 bits. Bigger ones cannot be
#: printed (Python refuses int → str beyond 4300 digits) and no API answer holds one.
_MAX_INT_BYTES = 128
_FILE_PATTERN = re.compile(r"^pred_hist_(\d+)\.pkl$")
_EXPECTED_KEYS = ("ground_truth", "pred")

#: The shape each API's responses had in the predecessor's pickles (for error messages).
_EXPECTED_SHAPE = {
    "google": "an OrderedDict (or dict) mapping label description -> score",
    "clarifai": 'a dict {"outputs": [{"data": {"concepts": [{"name": ..., "value": ...}, ...]}}], ...}',
    "aws": 'a list of dicts {"Name": ..., "Confidence": ..., "Instances": [...], "Parents": [...]}',
    "azure": 'a list of dicts {"name": ..., "confidence": ...}',
}

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------
# restricted unpickling
# --------------------------------------------------------------------------------------
def _describe_args(args: tuple) -> str:
    return "(" + ", ".join(type(a).__name__ for a in args) + ")"


_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}


class _Dispatch(dict):
    """The opcode table of one RestrictedUnpickler: an opcode left out of it is refused by name."""

    def __init__(self, table: dict, refuse: Callable[[str], Exception]):
        super().__init__(table)
        self._refuse = refuse

    def __missing__(self, code: int):
        if code not in _OPCODE_NAMES:
            raise pickle.UnpicklingError(f"invalid load key {code:#x}: not a pickle opcode")
        raise self._refuse(f"it uses the opcode {_OPCODE_NAMES[code]}, which plain data never needs")


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: every opcode goes through this class
    """An unpickler that builds plain data and nothing else, with bounded work.

    Admitted globals: ``dict``, ``list``, ``tuple``, ``str``, ``bytes``, ``int``, ``float``,
    ``bool`` (module ``builtins``, or ``__builtin__`` as protocols 0–2 write it),
    ``collections.OrderedDict``, and ``_codecs.encode`` (how Python 3 writes ``bytes`` at
    protocols 0–2). Each is handed out as a fresh wrapper that checks its arguments when the
    pickle calls it: ``_codecs.encode`` only as ``(str, "latin1")``, the types with no argument
    or (containers) one list, and what the wrappers build is charged to a budget, so a small
    file cannot expand into a huge one. Every other global (``os.system``, ``builtins.eval``,
    ``copyreg._reconstructor``, ``set``, NumPy ...) and every persistent id raises
    :class:`UnsafePickleError` when the pickle names it, i.e. before it could be called.
    :func:`load_legacy_pickle` also scans the opcodes first and refuses those plain data never
    uses (BUILD, INST, OBJ, NEWOBJ, the EXT codes of copyreg's registry, which would bypass
    ``find_class``, persistent ids, out-of-band buffers, sets).

    The work is bounded whatever the file holds. It is Python's pure-Python unpickler with
    an opcode table of the plain-data opcodes only (any other raises UnsafePickleError), at
    most ``max_opcodes`` opcodes, a memo that is a dict (a PUT at index 2³¹ costs one entry,
    where the C unpickler would allocate gigabytes), integers of at most 1024 bits, and dicts
    built only from scalar keys (str, int, float, bool, None) with at most 8 keys sharing a
    hash value and 100,000 keys in all: a pickle built for hash collisions, whose insertion
    would take quadratic time, is refused at its 9th colliding key.

    Args:
        file: a binary file object positioned at the pickle.
        path: the file's name, for messages.
        encode_budget: bytes ``_codecs.encode`` and items the container types may build in total.
        max_opcodes: the most opcodes executed (default ``MAX_PICKLE_OPCODES``).
    """

    def __init__(self, file: io.BufferedIOBase, path: PathLike = "<pickle>", encode_budget: int = 64 * 2**20,
                 max_opcodes: int = MAX_PICKLE_OPCODES):
        # Python 2 pickles: 8-bit str is decoded as UTF-8 (what API responses were)
        super().__init__(file, fix_imports=False, encoding="utf-8", errors="strict")
        self._path = os.fspath(path)
        self._encode_budget = encode_budget  # bytes _codecs.encode may build in total (no amplification)
        self._copy_budget = encode_budget  # items the container types may copy in total
        self._opcodes_left = max_opcodes
        self._max_opcodes = max_opcodes
        self._key_hashes: dict[int, tuple[dict, dict]] = {}  # id(dict) -> (the dict, {hash: keys with it})
        self.dispatch = self._plain_data_dispatch()
        self._allowed: dict[tuple[str, str], Callable[..., Any]] = {
            ("builtins", "dict"): self._typed("builtins.dict", dict),
            ("builtins", "list"): self._typed("builtins.list", list),
            ("builtins", "tuple"): self._typed("builtins.tuple", tuple),
            ("builtins", "str"): self._typed("builtins.str", str),
            ("builtins", "bytes"): self._typed("builtins.bytes", bytes),
            ("builtins", "int"): self._typed("builtins.int", int),
            ("builtins", "float"): self._typed("builtins.float", float),
            ("builtins", "bool"): self._typed("builtins.bool", bool),
            ("collections", "OrderedDict"): self._typed("collections.OrderedDict", OrderedDict),
            ("_codecs", "encode"): self._latin1_encoder(),
        }

    def _refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(
            f"{self._path}: refused to load the pickle: {what}. Nothing was executed. Only pickles of dicts, lists, tuples, "
            "OrderedDicts, str, bytes, numbers, bools and None are imported; if the file is yours, "
            "re-save the responses as such plain data (or as JSON)."
        )

    # -- the opcode table ---------------------------------------------------------------
    def _plain_data_dispatch(self) -> "_Dispatch":
        """Python's opcode table restricted to plain data, each opcode counted; the ones that
        insert dict keys or decode long integers replaced by checked versions."""
        replaced = {
            "DICT": RestrictedUnpickler._load_dict,
            "SETITEM": RestrictedUnpickler._load_setitem,
            "SETITEMS": RestrictedUnpickler._load_setitems,
            "LONG4": RestrictedUnpickler._load_long4,
        }
        table = {}
        for code, load in pickle._Unpickler.dispatch.items():
            name = _OPCODE_NAMES.get(code)
            if name is None or name in _OBJECT_OPCODES or name in _SET_OPCODES:
                continue
            table[code] = self._counted(replaced.get(name, load))
        return _Dispatch(table, self._refuse)

    def _counted(self, load: Callable[[Any], None]) -> Callable[[Any], None]:
        def step(unpickler: Any) -> None:
            self._opcodes_left -= 1
            if self._opcodes_left < 0:
                raise NotAQueryLogError(
                    f"{self._path}: not a predecessor query log: it holds more than {self._max_opcodes:,} pickle "
                    "opcodes (one image's log holds about 10,000); is it the right file?"
                )
            load(unpickler)

        return step

    def _admit_keys(self, target: Any, keys: Sequence[Any]) -> None:
        """Check ``keys`` before they go into ``target`` (a dict being built): scalar types,
        at most ``_MAX_SAME_HASH`` per hash value, ``_MAX_DICT_KEYS`` in all."""
        if type(target) not in (dict, OrderedDict):
            return  # the assignment fails (or indexes a list) as plain Python would
        seen = self._key_hashes.get(id(target))
        if seen is None or seen[0] is not target:
            # holding the dict keeps its id unique while this load runs
            seen = self._key_hashes[id(target)] = (target, {})
        counts = seen[1]
        for key in keys:
            if type(key) not in _KEY_TYPES:
                raise self._refuse(
                    f"a dict key is a {type(key).__name__}; plain data here keys its dicts with str, int, float, bool "
                    "or None"
                )
            value = hash(key)
            counts[value] = counts.get(value, 0) + 1
            if counts[value] > _MAX_SAME_HASH:
                raise self._refuse(
                    f"more than {_MAX_SAME_HASH} keys of one dict share the hash value {value} (a pickle built for hash "
                    "collisions: inserting them would take quadratic time)"
                )
        if len(target) + len(keys) > _MAX_DICT_KEYS:
            raise self._refuse(f"a dict gets more than {_MAX_DICT_KEYS:,} keys (an API answer holds a few dozen)")

    @staticmethod
    def _pairs(items: list) -> list:
        if len(items) % 2:
            raise pickle.UnpicklingError("a dict opcode with an odd number of keys and values")
        return items

    def _load_dict(self) -> None:
        items = self._pairs(self.pop_mark())
        built: dict = {}
        self._admit_keys(built, items[0::2])
        for position in range(0, len(items), 2):
            built[items[position]] = items[position + 1]
        self.append(built)

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        target = self.stack[-1]
        self._admit_keys(target, (key,))
        target[key] = value

    def _load_setitems(self) -> None:
        items = self._pairs(self.pop_mark())
        target = self.stack[-1]
        self._admit_keys(target, items[0::2])
        for position in range(0, len(items), 2):
            target[items[position]] = items[position + 1]

    def _load_long4(self) -> None:
        header = self.read(4)
        size = int.from_bytes(header, "little", signed=True)
        if len(header) != 4 or size < 0:
            raise pickle.UnpicklingError("LONG4 with a truncated or negative byte count")
        if size > _MAX_INT_BYTES:
            raise self._refuse(f"it holds an integer of {size:,} bytes (at most {_MAX_INT_BYTES} are read)")
        data = self.read(size)
        if len(data) != size:
            raise pickle.UnpicklingError("LONG4 cut short")
        self.append(int.from_bytes(data, "little", signed=True))

    def load(self) -> Any:
        """The unpickled plain data (see the class docstring for what is refused)."""
        try:
            return super().load()
        finally:
            self._key_hashes.clear()

    def _typed(self, name: str, factory: type) -> Callable[..., Any]:
        def build(*args: Any, **kwargs: Any) -> Any:
            # plain data calls these with no argument (Python 3: OrderedDict() then SETITEMS, bytes()
            # for b""), or a container with one list of items (Python 2's OrderedDict([[k, v], ...]));
            # what is copied is charged to a budget, so a small pickle cannot copy one big list again
            # and again
            if not args and not kwargs:
                return factory()
            if kwargs or len(args) != 1 or factory not in (dict, OrderedDict, list, tuple) \
                    or type(args[0]) not in (list, tuple):
                raise self._refuse(
                    f"it calls {name} with {_describe_args(args)}; plain data calls it with no argument "
                    "(or a container with one list)"
                )
            self._copy_budget -= len(args[0])
            if self._copy_budget < 0:
                raise self._refuse("it copies more items than the file could hold (one list copied over and over)")
            if factory is dict or factory is OrderedDict:  # [[key, value], ...]: the keys are checked first
                built = factory()
                pairs = args[0]
                if not all(type(pair) in (list, tuple) and len(pair) == 2 for pair in pairs):
                    raise self._refuse(f"it calls {name} with items that are not [key, value] pairs")
                self._admit_keys(built, [pair[0] for pair in pairs])
                for key, value in pairs:
                    built[key] = value
                return built
            return factory(args[0])

        build.__qualname__ = build.__name__ = f"restricted_{name}"
        return build

    def _latin1_encoder(self) -> Callable[..., bytes]:
        def encode(*args: Any, **kwargs: Any) -> bytes:
            if kwargs or len(args) != 2 or type(args[0]) is not str or type(args[1]) is not str \
                    or args[1].lower() not in ("latin1", "latin-1"):
                shown = _describe_args(args) if len(args) != 2 or type(args[1]) is not str else \
                    f"({type(args[0]).__name__}, {args[1][:40]!r})"
                raise self._refuse(f"it calls _codecs.encode with {shown}; only (str, 'latin1') encodes bytes")
            self._encode_budget -= len(args[0])
            if self._encode_budget < 0:
                raise self._refuse("it builds more bytes than the file could hold (the same string encoded over and over)")
            return codecs.encode(args[0], "latin-1")

        # a fresh function per unpickler: nothing a pickle does to it outlives this load
        encode.__qualname__ = encode.__name__ = "restricted__codecs.encode"
        return encode

    def find_class(self, module: str, name: str) -> Any:
        """The admitted wrapper for ``module.name``; anything else raises UnsafePickleError."""
        key = ("builtins" if module == "__builtin__" else module, name)
        try:
            return self._allowed[key]
        except (KeyError, TypeError):
            raise self._refuse(
                f"it names the global {module}.{name}, which is not plain data (loading it could run code)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids reference objects outside the pickle: always refused."""
        raise self._refuse(
            f"it holds a persistent id of type {type(pid).__name__} (a reference to an object outside the file)"
        )


class _PlainData:
    """Copies an unpickled object into fresh plain containers, refusing anything else."""

    def __init__(self, path: str, node_cap: int):
        self.path = path
        self.node_cap = node_cap
        self.nodes = 0

    def fail(self, message: str) -> NotAQueryLogError:
        return NotAQueryLogError(f"{self.path}: not a predecessor query log: {message}")

    def copy(self, obj: Any, depth: int = 0, on_path: Optional[set] = None) -> Any:
        self.nodes += 1
        if self.nodes > self.node_cap:
            raise self.fail(
                f"the pickle expands to more than {self.node_cap:,} values (shared references repeated over and "
                "over?); a real log of one image holds far fewer"
            )
        kind = type(obj)
        if obj is None or kind in (str, bytes, int, float, bool):
            return obj
        if depth >= _MAX_DEPTH:
            raise self.fail(f"data nested deeper than {_MAX_DEPTH} levels")
        if kind not in (dict, OrderedDict, list, tuple):
            raise self.fail(
                f"it holds a {kind.__name__}, which is not plain data (dict, list, tuple, OrderedDict, str, bytes, "
                "int, float, bool, None)"
            )
        on_path = set() if on_path is None else on_path
        if id(obj) in on_path:
            raise self.fail("it holds a container that contains itself (a cycle)")
        on_path.add(id(obj))
        try:
            if kind is list or kind is tuple:
                items = [self.copy(item, depth + 1, on_path) for item in list.__iter__(obj)] if kind is list else \
                    [self.copy(item, depth + 1, on_path) for item in tuple.__iter__(obj)]
                return items if kind is list else tuple(items)
            out = OrderedDict() if kind is OrderedDict else {}
            for key, value in dict.items(obj):
                out[self.copy(key, depth + 1, on_path)] = self.copy(value, depth + 1, on_path)
            return out
        finally:
            on_path.discard(id(obj))


#: Opcodes plain data never needs: object construction and state (BUILD, INST, OBJ, NEWOBJ*),
#: the copyreg extension registry (EXT*, which would skip find_class), references outside the
#: file (PERSID, BINPERSID) and out-of-band buffers. A pickle holding one is refused unread.
_OBJECT_OPCODES = frozenset({
    "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID",
    "NEXT_BUFFER", "READONLY_BUFFER",
})

#: Opcodes that build sets (protocol 4+): never plain data here, and a set built from
#: colliding keys would take quadratic time before anything could look at it.
_SET_OPCODES = frozenset({"EMPTY_SET", "ADDITEMS", "FROZENSET"})

#: Opcodes that store into the memo at an index the pickle chooses.
_PUT_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _unreadable(path: Path, exc: Exception) -> NotAQueryLogError:
    return NotAQueryLogError(
        f"{path} is not a readable predecessor pickle ({type(exc).__name__}: {exc}); the importer reads the "
        "pred_hist_<i>.pkl files written by microsoft/denoised-smoothing's vision_api"
    )


def _refuse_object_opcodes(blob: bytes, path: Path, max_opcodes: int = MAX_PICKLE_OPCODES) -> int:
    """Scan the opcodes (nothing is built or called): refuse an unreadable stream, one using an
    opcode plain data never needs, one building a set, one storing into the memo far beyond
    its values, and one of more than ``max_opcodes`` opcodes. Returns the number of opcodes."""
    forbidden = unsafe = not_plain = None
    count = 0
    try:
        for opcode, argument, position in pickletools.genops(blob):
            count += 1
            if count > max_opcodes:
                raise NotAQueryLogError(
                    f"{path}: not a predecessor query log: it holds more than {max_opcodes:,} pickle opcodes (one image's "
                    "log holds about 10,000); is it the right file?"
                )
            name = opcode.name
            if name in _OBJECT_OPCODES and forbidden is None:
                forbidden = (name, position)
            elif name in _SET_OPCODES and not_plain is None:
                not_plain = f"it holds a set (opcode {name} at byte {position}), which is not plain data"
            elif name in _PUT_OPCODES and unsafe is None and argument > count:
                # honest pickles number their memo entries 0, 1, 2 ...: an index past the values
                # read so far only serves to make the C unpickler allocate a memo that large
                unsafe = f"it stores memo entry {argument:,} after {count:,} opcodes (a memo index built to exhaust memory)"
    except NotAQueryLogError:
        raise
    except Exception as exc:  # truncated, garbled, or not a pickle at all
        raise _unreadable(path, exc) from None
    if forbidden is not None:
        raise UnsafePickleError(
            f"{path}: refused to load the pickle: it uses the opcode {forbidden[0]} at byte {forbidden[1]}, which "
            "builds objects rather than plain data. Nothing was executed."
        )
    if unsafe is not None:
        raise UnsafePickleError(f"{path}: refused to load the pickle: {unsafe}. Nothing was executed.")
    if not_plain is not None:
        raise NotAQueryLogError(f"{path}: not a predecessor query log: {not_plain}")
    return count


def load_legacy_pickle(path: PathLike, *, max_bytes: int = MAX_PICKLE_BYTES) -> dict:
    """Read one predecessor pickle ``pred_hist_<i>.pkl`` safely.

    Args:
        path: the pickle file.
        max_bytes: refuse files larger than this many bytes (default 512 MiB).

    Returns:
        ``{"ground_truth": [clean_response], "pred": [noisy_response, ...]}`` as fresh plain
        data: exactly one clean response, a list of noisy ones (possibly empty); responses are
        nested dict / OrderedDict / list / tuple / str / bytes / int / float / bool / None.
        robust_api's own pickles read the same: a pickled CallLog is that list of answers, and
        a pickled result (a dict with "logs") gives its "logs".

    Raises:
        FileNotFoundError: nothing at ``path``.
        UnsafePickleError: the pickle names a global other than plain data, or a persistent
            id, or is built to exhaust the loader (dict keys with colliding hashes, a memo
            index far past its values, a huge integer); nothing was executed.
        NotAQueryLogError: not a regular file (a FIFO, socket, device or folder is refused
            before it is opened, so nothing blocks), too large (bytes, or more than
            ``MAX_PICKLE_OPCODES`` opcodes), not a readable pickle, not a dict with exactly
            the keys "ground_truth" and "pred", or holding something other than plain data
            (sets, tuple dict keys, nesting deeper than 100, cycles).
        LogAccessError: the file cannot be opened or read (permissions).

    The time and memory one call takes are bounded by the file's size and the caps above,
    whatever the file holds.
    """
    path = Path(path)
    data, _, _ = _read_pickle(path, max_bytes)
    return {"ground_truth": data["ground_truth"], "pred": data["pred"]}


def _file_kind(mode: int) -> Optional[str]:
    """What a non-regular file is (None for a regular file)."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def _read_regular_file(path: Path, max_bytes: int, what: str, hint: str) -> tuple[bytes, os.stat_result]:
    """The bytes and status of a regular file of at most ``max_bytes`` bytes.

    A FIFO, socket, device or folder is refused from its ``os.stat`` before it is opened (a
    FIFO would block the reader forever, a device never end). The file is then opened with
    O_NONBLOCK and checked again with ``os.fstat``, so a FIFO swapped in between is refused
    too, without a read.

    Raises:
        FileNotFoundError: nothing at ``path``.
        NotAQueryLogError: not a regular file, or larger than ``max_bytes``.
        LogAccessError: it cannot be opened or read (permissions ...).
    """
    def check(info: os.stat_result) -> None:
        kind = _file_kind(info.st_mode)
        if kind is not None:
            raise NotAQueryLogError(f"{path} is {kind}, not a file: refused without reading it; {hint}")
        if info.st_size > max_bytes:
            raise NotAQueryLogError(
                f"{path} is {info.st_size:,} bytes, more than the {max_bytes:,} bytes {what} is read up to; is it the "
                "right file?" + (" Pass max_bytes= to raise the cap." if what == "a predecessor pickle" else "")
            )

    try:
        check(os.stat(path))
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
        descriptor = os.open(path, flags)
        with os.fdopen(descriptor, "rb") as handle:
            info = os.fstat(handle.fileno())
            check(info)
            blob = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {os.fspath(path)!r}") from None
    except OSError as exc:  # permission denied, I/O error ...
        raise LogAccessError(f"cannot read {path} ({type(exc).__name__}: {exc.strerror or exc})") from None
    if len(blob) > max_bytes:
        raise NotAQueryLogError(f"{path} grew past {max_bytes:,} bytes while being read; refused")
    return blob, info


def _read_pickle(path: Path, max_bytes: int) -> tuple[dict, bytes, float]:
    """(data, the file's bytes, its mtime) of one predecessor pickle (see load_legacy_pickle)."""
    blob, info = _read_regular_file(
        path, max_bytes, "a predecessor pickle",
        "pass a pred_hist_<i>.pkl file (or a folder of them to import_legacy)",
    )
    opcodes = _refuse_object_opcodes(blob, path, MAX_PICKLE_OPCODES)
    try:
        loaded = RestrictedUnpickler(io.BytesIO(blob), path, encode_budget=max(1 << 20, 2 * len(blob)),
                                     max_opcodes=MAX_PICKLE_OPCODES).load()
    except (UnsafePickleError, NotAQueryLogError):
        raise
    except RecursionError:
        raise NotAQueryLogError(f"{path}: not a predecessor query log: the pickle is nested too deeply") from None
    except MemoryError:
        raise NotAQueryLogError(f"{path}: not a predecessor query log: the pickle does not fit in memory") from None
    except Exception as exc:  # pickle.UnpicklingError, EOFError, ValueError, TypeError, UnicodeDecodeError ...
        raise _unreadable(path, exc) from None
    data = _PlainData(os.fspath(path), max(_MIN_NODE_CAP, 2 * opcodes)).copy(loaded)
    if not isinstance(data, dict):
        raise NotAQueryLogError(
            f"{path}: not a predecessor query log: the pickle holds a {type(data).__name__}, expected a dict "
            '{"ground_truth": [clean response], "pred": [noisy responses]}'
        )
    keys = list(data)
    if len(keys) != len(_EXPECTED_KEYS) or set(keys) != set(_EXPECTED_KEYS):
        missing = [k for k in _EXPECTED_KEYS if k not in data]
        extra = [k for k in keys if k not in _EXPECTED_KEYS]
        raise NotAQueryLogError(
            f"{path}: not a predecessor query log: expected exactly the keys 'ground_truth' and 'pred'"
            + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else "")
        )
    (clean, _), (noisy, noisy_meta) = _answers_of(data["ground_truth"]), _answers_of(data["pred"])
    if type(clean) not in (list, tuple) or len(clean) != 1:
        got = f"{len(clean)} items" if type(clean) in (list, tuple) else f"a {type(clean).__name__}"
        raise NotAQueryLogError(
            f"{path}: not a predecessor query log: 'ground_truth' must be a list of exactly one response "
            f"(the clean image's), got {got}"
        )
    if type(noisy) not in (list, tuple):
        raise NotAQueryLogError(
            f"{path}: not a predecessor query log: 'pred' must be a list of responses, got a {type(noisy).__name__}"
        )
    return {"ground_truth": list(clean), "pred": list(noisy), "pred_result": noisy_meta}, blob, info.st_mtime


def _answers_of(value: Any) -> tuple[Any, dict]:
    """A pickled robust_api result (a dict with "logs", from ``pickle.dump(result)``) gives its
    answers and the rest of the dict; the predecessor's list of answers stays as it is."""
    if isinstance(value, dict) and type(value.get("logs")) in (list, tuple) and "kind" in value:
        return value["logs"], value
    return value, {}


# --------------------------------------------------------------------------------------
# labels and raw responses
# --------------------------------------------------------------------------------------
class _ShapeError(Exception):
    pass


def _first_dict(response: Any) -> dict:
    if not isinstance(response, (list, tuple)):
        raise _ShapeError(f"got a {type(response).__name__}")
    first = response[0]
    if not isinstance(first, dict):
        raise _ShapeError(f"its first item is a {type(first).__name__}")
    return first


def _name(item: dict, key: str) -> str:
    if key not in item:
        raise _ShapeError(f"its first item has no {key!r} key (keys: {', '.join(map(str, list(item)[:6]))})")
    value = item[key]
    if not isinstance(value, str):
        raise _ShapeError(f"its first item's {key!r} is a {type(value).__name__}, not a string")
    return value


def _clarifai_label(response: Any) -> str:
    if not isinstance(response, dict):
        raise _ShapeError(f"got a {type(response).__name__}")
    outputs = response.get("outputs")
    if not isinstance(outputs, (list, tuple)) or not outputs:
        raise _ShapeError("it has no non-empty 'outputs' list")
    first = outputs[0]
    if not isinstance(first, dict):
        raise _ShapeError(f"outputs[0] is a {type(first).__name__}")
    data = first.get("data")
    if data is None:
        return NO_LABEL
    if not isinstance(data, dict):
        raise _ShapeError(f"outputs[0]['data'] is a {type(data).__name__}")
    concepts = data.get("concepts")
    if not concepts:
        return NO_LABEL
    if not isinstance(concepts, (list, tuple)) or not isinstance(concepts[0], dict):
        raise _ShapeError("outputs[0]['data']['concepts'] is not a list of dicts")
    return _name(concepts[0], "name")


def legacy_label(api: str, response: Any) -> str:
    """The predecessor's top class of one raw response (its ``_get_top_class``).

    Args:
        api: "azure", "google", "aws" or "clarifai".
        response: one raw response as pickled (see ``load_legacy_pickle``).

    Returns:
        The top label (str): ``NO_LABEL`` for an empty/falsy response (the predecessor's
        class "None") and for a Clarifai answer without concepts; else google: the first key;
        clarifai: ``outputs[0].data.concepts[0].name``; aws: ``[0]["Name"]``; azure: ``[0]["name"]``.

    Raises:
        InvalidParameterError: unknown api.
        NotAQueryLogError: the response does not have that API's shape (wrong ``api``?).
    """
    api = _check_api(api)
    try:
        return _label(api, response)
    except _ShapeError as exc:
        raise NotAQueryLogError(f"the response is not {_EXPECTED_SHAPE[api]}: {exc}; is api={api!r} right?") from None


def _label(api: str, response: Any) -> str:
    if not response:
        return NO_LABEL
    if api == "google":
        if not isinstance(response, dict):
            raise _ShapeError(f"got a {type(response).__name__}")
        first = next(iter(response))
        if not isinstance(first, str):
            raise _ShapeError(f"its first key is a {type(first).__name__}, not a label string")
        return first
    if api == "clarifai":
        return _clarifai_label(response)
    if api == "aws":
        return _name(_first_dict(response), "Name")
    return _name(_first_dict(response), "name")


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise _ShapeError(f"a dict key is a {type(key).__name__}; only str/number keys can be stored as JSON")


def _jsonable(value: Any) -> Any:
    """Plain data → JSON-able data: OrderedDict → dict (order kept), tuple → list,
    bytes → {"bytes_base64": ...}, non-str keys → their JSON text."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            text = _json_key(key)
            if text in out:
                raise _ShapeError(f"two dict keys both read {text!r} once stored as JSON")
            out[text] = _jsonable(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, bytes):
        return {"bytes_base64": base64.b64encode(value).decode("ascii")}
    return value


# --------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------
def _check_api(api: Any) -> str:
    if api not in LEGACY_APIS:
        raise InvalidParameterError(
            f"api must be one of {', '.join(map(repr, LEGACY_APIS))} (the API whose answers the pickles hold), got {api!r}"
        )
    return api


def _source_files(source: Any) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no predecessor log at {os.fspath(source)!r}")
        if not path.is_dir():
            return [path]
        found = []
        for child in path.iterdir():
            match = _FILE_PATTERN.match(child.name)
            if match:
                try:
                    kind = _file_kind(os.stat(child).st_mode)
                except OSError as exc:  # a dangling link, no permission
                    raise LogAccessError(f"cannot read {child} ({type(exc).__name__}: {exc.strerror or exc})") from None
                if kind is not None:  # refused, not skipped: an import never silently leaves a file out
                    raise NotAQueryLogError(f"{child} is {kind}, not a file: refused without reading it")
                found.append((int(match.group(1)), child))
        if not found:
            raise NotAQueryLogError(
                f"{path} holds no pred_hist_<i>.pkl files; pass the folder the predecessor's vision_api wrote its "
                "query logs to, or the pickle files themselves"
            )
        return [child for _, child in sorted(found)]
    if isinstance(source, Iterable) and not isinstance(source, (bytes, dict)):
        files = []
        for item in source:
            if not isinstance(item, (str, os.PathLike)):
                raise InvalidParameterError(f"source must hold file paths, got a {type(item).__name__}")
            path = Path(item)
            if not path.exists():
                raise FileNotFoundError(f"no predecessor pickle at {os.fspath(item)!r}")
            files.append(path)
        if not files:
            raise InvalidParameterError("source is an empty list; pass a folder or at least one pred_hist_<i>.pkl file")
        return files
    raise InvalidParameterError(
        f"source must be a folder, a pickle file or a list of pickle files, got {type(source).__name__}"
    )


def _run_id(digest: str, kind: str) -> str:
    return hashlib.sha256(f"{digest}:{kind}".encode("ascii")).hexdigest()[:32]


@dataclass(frozen=True)
class _Settings:
    api: str
    noise_sd: float
    N0: int
    alpha: float
    denoiser: Optional[str]


def _answer_record(api: str, phase: str, index: int, response: Any, where: str, cost: float,
                   stamp: float) -> QueryRecord:
    """One predecessor answer as a record: its label (the predecessor's rule) and the answer as JSON."""
    try:
        label = _label(api, response)
        raw = _jsonable(response)
        dumps_raw(raw)  # storable as JSON: checked before anything is written
    except ProviderResponseError as exc:
        raise NotAQueryLogError(f"{where} cannot be stored as JSON ({exc})") from None
    except _ShapeError as exc:
        raise NotAQueryLogError(
            f"{where} is not {_EXPECTED_SHAPE[api]} ({exc}); were these answers from another API? "
            f"Check --api/api= (got {api!r}; one of {', '.join(LEGACY_APIS)})"
        ) from None
    return QueryRecord(phase, index, label, raw, 0.0, cost, stamp, None, False)


def _check_enough(noisy: Sequence[Any], N0: int, where: str) -> None:
    if len(noisy) <= N0:
        raise LogMismatchError(
            f"{where} holds {len(noisy)} noisy responses, but N0={N0} selection samples need at least {N0 + 1} "
            f"(N0 + at least one estimation sample); pass the N0 the predecessor used (its default was 20)"
        )


def _noisy_records(api: str, noisy: Sequence[Any], N0: int, where: str, cost: float, stamp: float) -> tuple:
    return tuple(
        _answer_record(api, "selection" if i < N0 else "estimation", i if i < N0 else i - N0, noisy[i],
                       f"{where}[{i}]", cost, stamp)
        for i in range(len(noisy))
    )


def call_from_answers(api: str, answers: Sequence[Any], noise_sd: Optional[float] = None, N0: int = 20,
                      alpha: float = 0.001, kind: str = "certify") -> CallLog:
    """An in-memory call from a list of the predecessor's answers (the list its ``predict`` or
    ``certify`` returned as logs, or a pickled robust_api CallLog, which is that list).

    Args:
        api: "azure", "google", "aws" or "clarifai": the shape of the answers.
        answers: the answers, in the order they were made.
        noise_sd: σ the answers were drawn with: required for ``kind="certify"`` (in (0, 1]);
            for ``kind="predict"`` None or 0 reads them as clean answers.
        N0: certify: the first N0 answers chose the class, the rest are estimation samples.
        alpha: α recorded with the call.
        kind: "certify" or "predict".

    Returns:
        A CallLog (provider ``"legacy:<api>"``, image digest = SHA-256 of the answers as JSON,
        seed 0 with ``params["seed"] == "unrecorded"``), to pass to offline predict/certify.

    Raises:
        InvalidParameterError: unknown api, bad noise_sd / N0 / alpha.
        NotAQueryLogError: an answer without ``api``'s shape.
        LogMismatchError: certify with N0 or fewer answers.
    """
    api = _check_api(api)
    alpha = check_alpha(alpha)
    if type(answers) not in (list, tuple):
        raise InvalidInputError(f"answers must be a list of the predecessor's answers, got {type(answers).__name__}")
    cost, stamp = price_per_query(api), 0.0
    if kind == "predict":
        noise = 0.0 if noise_sd is None else check_noise_sd(noise_sd, allow_zero=True)
        phase = "clean" if noise == 0 else "predict"
        records = tuple(_answer_record(api, phase, i, answer, f"answers[{i}]", cost, stamp)
                        for i, answer in enumerate(answers))
        params: dict = {"N": len(records), "alpha": alpha}
    else:
        if noise_sd is None:
            raise InvalidParameterError("noise_sd is required to certify from a list of answers (they do not record it)")
        noise = check_noise_sd(noise_sd, allow_zero=False)
        N0 = check_sample_count(N0, "N0")
        _check_enough(answers, N0, "the list")
        records = _noisy_records(api, answers, N0, "answers", cost, stamp)
        params = {"method": "cohen", "selection": "noise", "N0": N0, "N": len(answers) - N0, "alpha": alpha}
    blob = json.dumps([record.raw for record in records], sort_keys=True).encode()
    digest = hashlib.sha256(blob).hexdigest()
    header = CallHeader(
        run_id=_run_id(digest, kind), kind=kind, image_digest=digest, image_shape=(), provider=f"legacy:{api}",
        model_version=None, denoiser_id=None, denoiser_digest=None, noise_sd=noise, seed=0,
        params={**params, "imported_from": LEGACY_SOURCE, "legacy_api": api, "seed": "unrecorded"}, created=stamp,
    )
    return CallLog(header, records, "complete")


def _check_result_settings(path: Path, result: dict, settings: _Settings) -> None:
    """A pickled robust_api certificate says its σ and N₀: they must be the ones imported with."""
    for name, logged, given in (("noise_sd", result.get("noise_sd"), settings.noise_sd),
                                ("N0", result.get("N0"), settings.N0)):
        if logged is not None and logged != given:
            raise LogMismatchError(
                f"{path}: the pickled certificate was made with {name}={logged!r}, not {given!r}; "
                f"import it with --{name.replace('_', '-')} {logged}"
            )


def _calls_of_file(path: Path, settings: _Settings) -> list[CallLog]:
    data, blob, stamp = _read_pickle(path, MAX_PICKLE_BYTES)
    clean, noisy = data["ground_truth"], data["pred"]
    N0 = settings.N0
    _check_enough(noisy, N0, str(path))
    _check_result_settings(path, data["pred_result"], settings)
    api = settings.api

    def record(phase: str, index: int, response: Any, where: str) -> QueryRecord:
        return _answer_record(api, phase, index, response, f"{path}: {where}", cost, stamp)

    digest = hashlib.sha256(blob).hexdigest()
    cost = price_per_query(api)
    match = _FILE_PATTERN.match(path.name)
    common = {
        "imported_from": LEGACY_SOURCE,
        "file": path.name,
        "legacy_index": int(match.group(1)) if match else None,
        "legacy_api": api,
        "seed": "unrecorded",
    }

    def header(kind: str, noise_sd: float, params: dict) -> CallHeader:
        return CallHeader(
            run_id=_run_id(digest, kind), kind=kind, image_digest=digest, image_shape=(), provider=f"legacy:{api}",
            model_version=None, denoiser_id=settings.denoiser if kind == "certify" else None,  # clean: no denoiser
            denoiser_digest=None, noise_sd=noise_sd, seed=0,
            params=params, created=stamp,
        )

    clean_records = (record("clean", 0, clean[0], "ground_truth[0]"),)
    n = len(noisy) - N0
    noisy_records = _noisy_records(api, noisy, N0, f"{path}: pred", cost, stamp)
    predict_params = {"N": 1, "alpha": settings.alpha, **common}
    certify_params = {"method": "cohen", "selection": "noise", "N0": N0, "N": n, "alpha": settings.alpha, **common}
    return [
        CallLog(header("predict", 0.0, predict_params), clean_records, "complete"),
        CallLog(header("certify", settings.noise_sd, certify_params), noisy_records, "complete"),
    ]


@dataclass(frozen=True)
class _ImportReport:
    """What one import did (used by the CLI's summary)."""

    log: QueryLog
    files: int
    added: int
    skipped: int
    where: Optional[str]


def _write(target: QueryLog, calls: Sequence[CallLog]) -> tuple[int, int]:
    present = set(target.run_ids())
    added = skipped = 0
    for call in calls:
        run_id = call.header.run_id
        if run_id in present:
            earlier_call = target.load_call(run_id, with_raw=False)
            if earlier_call.status != "complete":
                raise LogIntegrityError(
                    f"{call.header.params.get('file')} was imported into this log before, but that import was "
                    f"interrupted (its {call.header.kind} call is {earlier_call.status!r}); import into a new log"
                )
            skipped += 1
            earlier = earlier_call.header
            if (earlier.noise_sd, earlier.params.get("N0"), earlier.provider) != (
                    call.header.noise_sd, call.header.params.get("N0"), call.header.provider):
                logger.warning(
                    "%s (%s call) was imported before with noise_sd=%s, N0=%s, provider=%s; kept that import and "
                    "skipped this one (noise_sd=%s, N0=%s, provider=%s). Import into a new log to change them.",
                    call.header.params.get("file"), call.header.kind, earlier.noise_sd, earlier.params.get("N0"),
                    earlier.provider, call.header.noise_sd, call.header.params.get("N0"), call.header.provider,
                )
            continue
        target.begin_call(call.header)
        target.append(run_id, call.records)
        target.finish_call(run_id, call.status)
        present.add(run_id)
        added += 1
    if skipped:
        logger.info("skipped %d imported calls already in the log (same pickle file contents)", skipped)
    return added, skipped


def _check_out(out: Any) -> None:
    """Refuse an ``out`` of the wrong type, or naming a FIFO, socket or device (opening one to
    read the log already there would block or never end), before any pickle is read."""
    if out is None or isinstance(out, QueryLog):
        return
    if not isinstance(out, (str, os.PathLike)):
        raise InvalidParameterError(
            f"out must be None (memory), a .jsonl/.parquet path, or a log file/folder, got {type(out).__name__}"
        )
    try:
        mode = os.stat(out).st_mode
    except (OSError, ValueError):
        return  # nothing there yet (or the store reports it)
    kind = _file_kind(mode)
    if kind is not None and not stat.S_ISDIR(mode):
        raise NotAQueryLogError(f"out={os.fspath(out)!r} is {kind}, not a log file or folder; pass another path")


def import_legacy_report(source, api, noise_sd, *, N0=20, alpha=0.001, denoiser=None, out=None) -> _ImportReport:
    if denoiser is not None and (not isinstance(denoiser, str) or not denoiser.strip()):
        raise InvalidParameterError(f"denoiser must be a non-empty name (str) or None, got {denoiser!r}")
    settings = _Settings(
        api=_check_api(api),
        noise_sd=check_noise_sd(noise_sd, allow_zero=False),
        N0=check_sample_count(N0, "N0"),
        alpha=check_alpha(alpha),
        denoiser=denoiser,
    )
    _check_out(out)
    files = _source_files(source)
    # every file is read and checked before the log is opened: a bad file writes nothing
    calls = [call for path in files for call in _calls_of_file(path, settings)]

    if out is None or isinstance(out, QueryLog):
        target = MemoryQueryLog() if out is None else out
        added, skipped = _write(target, calls)
        return _ImportReport(target, len(files), added, skipped, None if out is None else _where(target))
    if not isinstance(out, (str, os.PathLike)):
        raise InvalidParameterError(
            f"out must be None (memory), a .jsonl/.parquet path, or a log file/folder, got {type(out).__name__}"
        )
    text = os.fspath(out)
    suffix = Path(text).suffix.lower()
    if suffix in (".jsonl", ".parquet"):
        path = Path(text)
        reader, writer = (import_jsonl, export_jsonl) if suffix == ".jsonl" else (import_parquet, export_parquet)
        target = reader(path) if path.exists() else MemoryQueryLog()
        added, skipped = _write(target, calls)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        try:
            writer(target, partial)
            os.replace(partial, path)
        finally:
            if partial.exists():
                partial.unlink()
        return _ImportReport(target, len(files), added, skipped, os.fspath(path))
    target = open_store(text)
    try:
        added, skipped = _write(target, calls)
    except BaseException:
        target.close()
        raise
    return _ImportReport(target, len(files), added, skipped, _where(target))


def _where(log: QueryLog) -> Optional[str]:
    path = getattr(log, "path", None)
    return None if path is None else os.fspath(path)


def import_legacy(
    source: Union[PathLike, Sequence[PathLike]],
    api: str,
    noise_sd: float,
    *,
    N0: int = 20,
    alpha: float = 0.001,
    denoiser: Optional[str] = None,
    out: Union[PathLike, QueryLog, None] = None,
) -> QueryLog:
    """Import the predecessor's ``pred_hist_<i>.pkl`` query logs as robust_api calls.

    Each file becomes two calls, both with ``image_digest`` = SHA-256 of the pickle file
    (the image itself was never logged), ``image_shape=()``, ``provider="legacy:<api>"``,
    ``seed=0`` (the noise was unseeded: ``params["seed"] == "unrecorded"``), the file's
    mtime as time, each query costed at the API's list price, status "complete":

    * a ``predict`` call at noise_sd 0 with one "clean" record (the ground-truth answer);
    * a ``certify`` call at ``noise_sd`` with "selection" records 0..N0−1 (``pred[:N0]``)
      and "estimation" records 0..n−1 (``pred[N0:]``, n = len(pred) − N0), method "cohen".

    Re-certifying the certify call (``RobustAPI(api, online=False).certify(call)``) gives the
    predecessor's certificate: ĉ = top label of the selection answers, p̲ = Clopper–Pearson
    lower bound of its estimation votes at α, radius = noise_sd·Φ⁻¹(p̲), abstaining when
    p̲ ≤ ½. Ties among the selection votes go to the label with the smaller string here
    (the predecessor's order is not recoverable), so such images may certify another class.

    Args:
        source: a folder (its ``pred_hist_<i>.pkl`` files, in numeric order of i), one
            pickle file, or a list of pickle files.
        api: "azure", "google", "aws" or "clarifai": which API's answers the files hold.
        noise_sd: σ in (0, 1] pixel units the noisy copies were drawn with (not recorded
            in the pickles).
        N0: how many of the first noisy answers chose the class (≥ 1; the predecessor's
            default 20). Each file needs more than N0 noisy answers.
        alpha: α in (0, 1) recorded for re-certification (default 0.001).
        denoiser: a name for the denoiser the predecessor used (stored as ``denoiser_id``),
            or None.
        out: None → an in-memory log; a path ending in ``.jsonl`` (or ``.parquet``, needs
            pyarrow) → that export is written (merged with the export already there) and the
            in-memory log is returned; any other path or folder → an SQLite log
            (``open_store``), returned open (close it when done); or a QueryLog to add to.

    Returns:
        The log holding the imported calls (2 per file). Importing a file whose calls are
        already in the log (same run ids, derived from the file's bytes) skips them.

    Raises:
        InvalidParameterError: unknown api, bad noise_sd / N0 / alpha / denoiser / source.
        FileNotFoundError: a source path does not exist.
        UnsafePickleError: a pickle names a global other than plain data (nothing ran).
        NotAQueryLogError: a file is not a predecessor log, too large, not a regular file (a
            FIFO, socket or device is refused without being opened; so is such an ``out``), or
            its responses do not have ``api``'s shape (wrong ``api``?).
        LogMismatchError: a file holds N0 or fewer noisy answers.
        Nothing is written to ``out`` unless every file was read and checked.
    """
    return import_legacy_report(source, api, noise_sd, N0=N0, alpha=alpha, denoiser=denoiser, out=out).log


# --------------------------------------------------------------------------------------
# TSV results
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LegacyTSVRow:
    """One row of a predecessor (or Cohen et al.) certification TSV.

    Attributes:
        idx: the image index (int).
        true_label: the label used as ground truth (str; Cohen's int classes as text, the
            predecessor's clean API label, ``"None"`` for an empty answer).
        predicted: the certified class (str), or None when it abstained ("-1").
        radius: the certified L2 radius as printed (finite, ≥ 0; 0 on abstention).
        correct: whether the certified class equals the true label.
        radius_lower: the smallest radius that prints as ``radius``: the printed value minus
            half a unit of its last digit, at least 0 (the files rounded the radius, to 3
            decimals or 3 significant digits, so only this much is certain).
    """

    idx: int
    true_label: str
    predicted: Optional[str]
    radius: float
    correct: bool
    radius_lower: float = 0.0


_TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct")
_TRUE = {"true": True, "1": True, "false": False, "0": False}


def _rounding_floor(text: str) -> float:
    """The smallest value that rounds to ``text``: minus half a unit in its last printed digit."""
    exponent = decimal.Decimal(text).as_tuple().exponent
    return max(0.0, float(decimal.Decimal(text) - decimal.Decimal(5).scaleb(int(exponent) - 1)))


def read_legacy_tsv(path: PathLike) -> list[LegacyTSVRow]:
    """Read a certification TSV: the predecessor's ``log.txt`` or Cohen et al.'s output.

    Accepted headers (tab-separated, matched by column name, extra columns ignored):
    ``idx correct radius label predict`` (denoised-smoothing's vision_api) and
    ``idx label predict radius correct time`` (Cohen et al.). ``predict`` of ``-1`` is an
    abstention; ``correct`` is True/False or 1/0. Blank lines are skipped.

    Args:
        path: the TSV file.

    Returns:
        One :class:`LegacyTSVRow` per data row, in file order.

    Raises:
        FileNotFoundError: nothing at ``path``.
        NotAQueryLogError: not a regular file (a FIFO or device is refused without being
            opened) or larger than ``MAX_TSV_BYTES``, not UTF-8, the header lacks one of idx,
            label, predict, radius, correct, or a row is malformed (the message names its
            line number).
        LogAccessError: the file cannot be opened or read (permissions).
    """
    path = Path(path)
    blob, _ = _read_regular_file(path, MAX_TSV_BYTES, "a TSV", "pass the predecessor's log.txt (a text file)")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotAQueryLogError(f"{path} is not a UTF-8 text file ({exc}); expected a tab-separated log.txt") from None
    lines = text.splitlines()
    expected = (
        "expected a tab-separated header with the columns idx, label, predict, radius, correct "
        "(denoised-smoothing: 'idx\\tcorrect\\tradius\\tlabel\\tpredict'; Cohen et al.: "
        "'idx\\tlabel\\tpredict\\tradius\\tcorrect\\ttime')"
    )
    if not lines:
        raise NotAQueryLogError(f"{path} is empty; {expected}")
    header = [name.strip() for name in lines[0].split("\t")]
    missing = [name for name in _TSV_COLUMNS if name not in header]
    if missing or len(set(header)) != len(header):
        problem = f"missing {', '.join(missing)}" if missing else "a column name appears twice"
        raise NotAQueryLogError(f"{path}: unknown header {lines[0][:200]!r} ({problem}); {expected}")
    where = {name: header.index(name) for name in _TSV_COLUMNS}
    rows: list[LegacyTSVRow] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < len(header):
            raise NotAQueryLogError(
                f"{path}:{number}: {len(fields)} tab-separated fields, the header has {len(header)} columns"
            )
        value = {name: fields[index] for name, index in where.items()}
        try:
            idx = int(value["idx"].strip())
            radius = float(value["radius"].strip())
            if not math.isfinite(radius) or radius < 0:
                raise ValueError(f"radius {value['radius']!r} is not a finite number >= 0")
            correct_text = value["correct"].strip().lower()
            if correct_text not in _TRUE:
                raise ValueError(f"correct {value['correct']!r} is not True/False or 1/0")
        except ValueError as exc:
            raise NotAQueryLogError(f"{path}:{number}: malformed row ({exc})") from None
        predicted: Optional[str] = value["predict"]
        if predicted.strip() == "-1":
            predicted = None
        rows.append(LegacyTSVRow(idx=idx, true_label=value["label"], predicted=predicted, radius=radius,
                                 correct=_TRUE[correct_text], radius_lower=_rounding_floor(value["radius"].strip())))
    return rows
