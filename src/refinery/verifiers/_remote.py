"""Remote-call judging: the dataset's tests run in a judge process that never executes the program's code.

A functional test (``assert f(1) == 2``, HumanEval's ``check(candidate)``, ``Solution().twoSum(...)``) runs in the
*judge* with the judge's own untouched modules. The names the program defines are proxies there: calling one sends
the call to the *program* process, and only plain data crosses, both ways:

- plain data is None, bool, int, float, complex, str, bytes and list, tuple, dict, set, frozenset of plain data,
  checked by exact type (never ``isinstance``: an ``int`` subclass with its own ``__eq__`` is not plain), at most
  ``MAX_DEPTH`` deep and ``MAX_MESSAGE`` bytes per message; it travels as tagged JSON, never pickle or marshal;
- a call's result that is not plain data fails that test (``result is not plain data: <type>``); so does anything
  the judge cannot decode (a protocol error ends the run's remaining tests as failures);
- arguments the program mutated come back and are updated in place in the judge, so tests that inspect an
  argument after the call still work;
- calling a class the program defines returns a handle; its methods are called through the handle. A handle has no
  truth value and equals only itself, so it can never stand in for an answer.

Failures the judge detects (program died, not plain data, protocol error) are ``JudgeAbort``, a ``BaseException``:
a test's own ``except Exception`` cannot swallow them. Exceptions the program raises come back as the builtin
exception of that name (so ``except ValueError`` in a test works) or ``ProgramError``.

Standard library only, no ``refinery`` imports: both processes are forks of the sandbox's lean zygote.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import struct
import sys
from typing import Any, Callable

MAX_MESSAGE = 32 << 20  # bytes of one message, either way
MAX_DEPTH = 64  # nesting of plain data
MAX_NAMES = 10_000  # top-level names a program may declare
MAX_TEXT = 300  # characters of a reason taken from the program
PROGRAM_ENDED = "the program ended"  # what the judge knows when the channel closes (the zygote says why)
_BIG = 1 << 62  # ints beyond this travel as hex strings (JSON's decimal ints are capped at 4,300 digits)

# Modules a program imported are the judge's own copies in its namespace: those already imported, or these.
SAFE_MODULES = frozenset(
    "abc array base64 bisect calendar cmath collections copy dataclasses datetime decimal enum fractions functools "
    "hashlib heapq itertools json math numbers operator queue random re statistics string struct textwrap time "
    "types typing unicodedata".split())


class NotPlain(Exception):
    """A value that is not plain data (the message names its type or the limit it broke)."""


class JudgeAbort(BaseException):
    """A test failure the test itself cannot catch: the program died, returned something that is not plain data,
    or broke the protocol."""


class ProgramError(Exception):
    """An exception the program raised whose type is not a builtin exception."""


# ---------------------------------------------------------------------------------------------------------------
# Plain data <-> tagged JSON. Scalars are JSON scalars; every container is a JSON array whose first item is a tag.
# ---------------------------------------------------------------------------------------------------------------
def encode(x: Any, ref: Callable[[Any], Any] | None = None, depth: int = 0) -> Any:
    """``x`` as tagged JSON-able data; ``ref(x)`` may encode a non-plain value as a reference (else ``NotPlain``)."""
    t = type(x)
    if x is None or t is bool or t is str or t is float:
        return x
    if t is int:
        return x if -_BIG < x < _BIG else ["i", hex(x)]
    if depth >= MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    d = depth + 1
    if t is list or t is tuple:
        out = ["l" if t is list else "t"]
        for v in x:  # scalars inline (most items are): a call per item is most of the time on long lists
            tv = type(v)
            if tv is float or tv is str or tv is bool or v is None or (tv is int and -_BIG < v < _BIG):
                out.append(v)
            else:
                out.append(encode(v, ref, d))
        return out
    if t is dict:
        out = ["d"]
        for k, v in x.items():
            out.append(encode(k, ref, d))
            out.append(encode(v, ref, d))
        return out
    if t is set:
        return ["s", *[encode(v, ref, d) for v in x]]
    if t is frozenset:
        return ["f", *[encode(v, ref, d) for v in x]]
    if t is bytes:
        return ["b", x.decode("latin-1")]
    if t is complex:
        return ["c", x.real, x.imag]
    if ref is not None:
        r = ref(x)
        if r is not None:
            return r
    raise NotPlain(t.__name__[:MAX_TEXT])


def decode(v: Any, ref: Callable[[str, list], Any] | None = None, depth: int = 0) -> Any:
    """The value of tagged JSON ``v`` (from ``json.loads``), built from builtin types only; ``ref(tag, item)``
    resolves reference tags. Anything malformed raises ``NotPlain``."""
    t = type(v)
    if v is None or t is bool or t is str or t is float or t is int:
        return v
    if t is not list or not v or type(v[0]) is not str:
        raise NotPlain(f"malformed value of type {t.__name__}")
    if depth >= MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    tag, d = v[0], depth + 1
    try:
        if tag == "l" or tag == "t":
            out = []
            for e in v[1:]:  # scalars inline, as in encode
                te = type(e)
                out.append(e if te is float or te is str or te is int or te is bool or e is None
                           else decode(e, ref, d))
            return out if tag == "l" else tuple(out)
        if tag == "d":
            if len(v) % 2 != 1:
                raise NotPlain("malformed dict")
            items = [decode(e, ref, d) for e in v[1:]]
            return dict(zip(items[::2], items[1::2]))
        if tag == "s":
            return {decode(e, ref, d) for e in v[1:]}
        if tag == "f":
            return frozenset([decode(e, ref, d) for e in v[1:]])
        if tag == "b" and len(v) == 2 and type(v[1]) is str:
            return v[1].encode("latin-1")
        if tag == "c" and len(v) == 3 and all(type(p) in (int, float) for p in v[1:]):
            return complex(v[1], v[2])
        if tag == "i" and len(v) == 2 and type(v[1]) is str and len(v[1]) <= (1 << 20):
            return int(v[1], 16)
    except (TypeError, ValueError, UnicodeError, OverflowError) as e:  # unhashable keys, bad hex, chars > 255
        raise NotPlain(f"malformed {tag!r}: {type(e).__name__}") from None
    if ref is not None:
        return ref(tag, v)
    raise NotPlain(f"unknown tag {tag[:20]!r}")


# ---------------------------------------------------------------------------------------------------------------
# Framing: 4-byte big-endian length + JSON. The receiver caps the length before reading the body.
# ---------------------------------------------------------------------------------------------------------------
def _json_codec() -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    """JSON text of a message and the value of one, as ``json.dumps(obj, separators=(",", ":"))`` and
    ``json.loads`` give them, through the C encoder and scanner directly: ``dumps`` with arguments builds a new
    encoder for every message and ``loads`` matches whitespace with a regex first, ~9 us of a call's ~40 (a call
    sends two messages). No circular-reference check: messages are built by ``encode``, fresh and depth-capped
    (a cycle could not get this far, and would end in RecursionError, not a loop). The scanner accepts exactly
    what ``json.loads`` accepts (NaN and Infinity included) except whitespace around the value, which no sender
    writes; anything else, trailing bytes included, is ``ValueError``."""
    from json import decoder, encoder

    make = getattr(encoder, "c_make_encoder", None)
    scan = decoder.JSONDecoder().scan_once
    default = json.JSONEncoder().default
    if make is None:  # a Python without the C accelerator: the library's own functions
        return (lambda obj: json.dumps(obj, separators=(",", ":"))), json.loads
    enc = make(None, default, encoder.encode_basestring_ascii, None, ":", ",", False, False, True)

    def dumps(obj: Any) -> str:
        return "".join(enc(obj, 0))

    def loads(text: str) -> Any:
        try:
            value, end = scan(text, 0)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(text):
            raise ValueError("extra data after the JSON value")
        return value

    return dumps, loads


dumps, loads = _json_codec()


def send_msg(sock: socket.socket, obj: Any) -> None:
    data = dumps(obj).encode()
    if len(data) > MAX_MESSAGE:
        raise NotPlain(f"message over {MAX_MESSAGE} bytes")
    sock.sendall(struct.pack("!I", len(data)) + data)


class Wire:
    """One end of a channel: framed messages out, and a read buffer in, so a message usually costs one recv."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, bytearray()

    def send(self, obj: Any) -> None:
        send_msg(self.sock, obj)

    def recv(self) -> Any:
        """The next message (None: the peer closed the channel). A malformed one raises ``NotPlain``."""
        buf = self.buf
        while True:
            if len(buf) >= 4:
                size = struct.unpack_from("!I", buf)[0]
                if size > MAX_MESSAGE:
                    raise NotPlain(f"message of {size} bytes (limit {MAX_MESSAGE})")
                if len(buf) >= 4 + size:
                    body = bytes(buf[4:4 + size])
                    del buf[:4 + size]
                    try:
                        return loads(body.decode("utf-8"))
                    except (ValueError, RecursionError) as e:
                        raise NotPlain(f"unreadable message: {type(e).__name__}") from None
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            buf += chunk


# ---------------------------------------------------------------------------------------------------------------
# The program's side (untrusted process): run the program, then answer calls. Nothing here needs to resist the
# program: whatever it makes this side send, the judge decodes as plain data or fails the test.
# ---------------------------------------------------------------------------------------------------------------
def _describe(ns: dict, handles: dict) -> list:
    import types

    out = []
    for name, v in list(ns.items())[:MAX_NAMES]:
        if type(name) is not str or name.startswith("__"):
            continue
        if isinstance(v, type):
            out.append([name, "class"])
        elif isinstance(v, types.ModuleType):
            out.append([name, ["module", str(getattr(v, "__name__", ""))[:200]]])
        elif callable(v):
            out.append([name, "function"])
        else:
            try:
                out.append([name, ["value", encode(v)]])
            except NotPlain:
                handles[len(handles)] = v
                out.append([name, ["object", len(handles) - 1]])
    return out


def serve_program(sock: socket.socket, code: str, setup: Any, exit_fn: Callable[[int], None]) -> None:
    """Run ``code`` (then ``setup``) as ``__main__`` and answer the judge's calls until it says ``end``."""
    try:
        compiled = compile(code, "solution.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        send_msg(sock, ["compile", f"{type(e).__name__}: {e}"[:MAX_TEXT]])
        exit_fn(1)
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compiled, ns)
        if setup:
            exec(setup if not isinstance(setup, str) else compile(setup, "<setup>", "exec", dont_inherit=True), ns)
    except SystemExit:
        send_msg(sock, ["runtime", "SystemExit before the tests ran"])
        exit_fn(1)
    except BaseException as e:
        import traceback

        traceback.print_exc()
        send_msg(sock, ["runtime", f"{type(e).__name__}: {str(e)[:MAX_TEXT]}"])
        exit_fn(1)
    handles: dict[int, Any] = {}
    send_msg(sock, ["ready", _describe(ns, handles)])
    answer = answerer(ns, handles)
    wire = Wire(sock)
    while True:
        msg = wire.recv()
        if msg is None or msg[0] == "end":
            exit_fn(0)
        reply = answer(msg)
        try:
            send_msg(sock, reply)
        except NotPlain as e:  # too large
            send_msg(sock, ["bad", f"result is not plain data: {e}"])


def answerer(ns: dict, handles: dict) -> Callable[[list], list]:
    """The program side's reply to one judge message (``call`` or ``get``), as a list to send."""

    def resolve(tag: str, v: list) -> Any:  # references in the judge's arguments
        if tag == "h" and len(v) == 2 and v[1] in handles:
            return handles[v[1]]
        if tag == "g" and len(v) == 2 and v[1] in ns:
            return ns[v[1]]
        raise NotPlain(f"unknown reference {tag!r}")

    def target(path: list) -> Any:
        obj = handles[path[1]] if path[0] == "h" else ns[path[1]]
        for attr in path[2:]:
            obj = getattr(obj, attr)
        return obj

    def raised(e: BaseException) -> list:
        try:
            text = str(e)[:MAX_TEXT]
        except BaseException:
            text = ""
        return ["raise", type(e).__name__, text]

    def answer(msg: list) -> list:
        try:
            if msg[0] == "get":
                value = target(msg[1])
                if callable(value):
                    return ["callable"]
                try:
                    return ["ok", encode(value)]
                except NotPlain as e:
                    return ["bad", f"attribute is not plain data: {e}"]
            _, path, args, kwargs = msg
            fn = target(path)
            a = [decode(x, resolve) for x in args]
            kw = {k: decode(x, resolve) for k, x in kwargs}
        except BaseException as e:
            return raised(e)
        try:
            result = fn(*a, **kw)
        except BaseException as e:  # SystemExit too: the call failed, the judge decides what that means
            return raised(e)
        if isinstance(fn, type):
            handles[len(handles)] = result
            return ["new", len(handles) - 1]
        try:
            changed = []
            for i, (old, new) in enumerate(zip(args, a)):
                if type(new) in (list, dict, set):
                    enc = encode(new)
                    if enc != old:
                        changed.append([i, enc])
            for k, old in kwargs:
                new = kw[k]
                if type(new) in (list, dict, set):
                    enc = encode(new)
                    if enc != old:
                        changed.append([k, enc])
        except NotPlain as e:
            return ["bad", f"an argument is not plain data after the call: {e}"]
        try:
            return ["ok", encode(result), changed]
        except NotPlain as e:
            return ["bad", f"result is not plain data: {e}"]

    return answer


def rehearse(program: str, tests: list) -> None:
    """Both sides of the protocol in this one process, messages through JSON as on the wire: run in the zygote
    before it forks, so the code every run executes is specialised and its caches filled once (see _zygote)."""
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(program, "solution.py", "exec", dont_inherit=True), ns)
    handles: dict[int, Any] = {}
    answer = answerer(ns, handles)

    class Loop:
        broken = ""

        def request(self, msg):
            wire = loads(dumps(msg))
            return loads(dumps(answer(wire)))

    g = _build_namespace(Loop(), loads(dumps(_describe(ns, handles))))  # type: ignore[arg-type]
    for test in tests:
        exec(test, g)


# ---------------------------------------------------------------------------------------------------------------
# The judge's side (trusted process): proxies for the program's names, then the tests.
# ---------------------------------------------------------------------------------------------------------------
class _Channel:
    """The judge's end of the call channel; once broken (program gone, protocol error) every call aborts."""

    def __init__(self, sock: socket.socket, on_death: Callable[[], str]):
        self.sock, self.on_death, self.broken = sock, on_death, ""
        self.wire = Wire(sock)

    def request(self, msg: list) -> list:
        if self.broken:
            raise JudgeAbort(self.broken)
        try:
            send_msg(self.sock, msg)
            reply = self.wire.recv()
        except NotPlain as e:
            self.broken = f"protocol error: {e}"
            raise JudgeAbort(self.broken) from None
        except OSError:
            reply = None
        if reply is None:
            self.broken = self.on_death()
            raise JudgeAbort(self.broken)
        if type(reply) is not list or not reply or type(reply[0]) is not str:
            self.broken = "protocol error: malformed reply"
            raise JudgeAbort(self.broken)
        return reply


def _sync(old: Any, new: Any) -> None:
    """Update the judge's argument ``old`` in place to the program's mutated copy ``new`` (same container type)."""
    if type(old) is list:
        if len(old) == len(new):
            for i, (a, b) in enumerate(zip(old, new)):
                if type(a) in (list, dict, set) and type(b) is type(a):
                    _sync(a, b)
                elif not (type(a) is type(b) and a == b):
                    old[i] = b
        else:
            old[:] = new
    elif type(old) is dict:
        for k in [k for k in old if k not in new]:
            del old[k]
        for k, b in new.items():
            a = old.get(k)
            if k in old and type(a) in (list, dict, set) and type(b) is type(a):
                _sync(a, b)
            else:
                old[k] = b
    else:
        old.clear()
        old.update(new)


def _raise_remote(reply: list) -> None:
    name = reply[1] if len(reply) > 1 and type(reply[1]) is str else "Exception"
    text = reply[2] if len(reply) > 2 and type(reply[2]) is str else ""
    text = text[:MAX_TEXT]
    exc = getattr(builtins, name, None) if name.isidentifier() else None
    if isinstance(exc, type) and issubclass(exc, Exception):
        try:
            raise exc(text)
        except TypeError:  # exceptions whose constructor wants other arguments (UnicodeDecodeError...)
            pass
    raise ProgramError(f"{name[:60]}: {text}")


class _Remote:
    """A name in the program: calling it calls the program; its attributes are further remote paths."""

    __slots__ = ("_chan", "_path", "_is_class")

    def __init__(self, chan: _Channel, path: list, is_class: bool = False):
        object.__setattr__(self, "_chan", chan)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_is_class", is_class)

    def __getattr__(self, name: str) -> _Remote:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Remote(self._chan, [*self._path, name])

    def __call__(self, *args, **kwargs):
        def ref(x):
            if type(x) is _Remote and x._chan is self._chan and len(x._path) == 2:
                return list(x._path)
            return None

        try:
            enc_args = [encode(a, ref) for a in args]
            enc_kwargs = [[k, encode(v, ref)] for k, v in kwargs.items()]
        except NotPlain as e:
            raise JudgeAbort(f"argument is not plain data: {e}") from None
        reply = self._chan.request(["call", self._path, enc_args, enc_kwargs])
        tag = reply[0]
        if tag == "ok" and len(reply) == 3 and type(reply[2]) is list:
            try:
                value = decode(reply[1])
                for item in reply[2]:
                    key, new = item
                    old = args[key] if type(key) is int and 0 <= key < len(args) else kwargs[key]
                    new = decode(new)
                    if type(old) in (list, dict, set) and type(new) is type(old):
                        _sync(old, new)
            except (NotPlain, KeyError, TypeError, ValueError, IndexError) as e:
                self._chan.broken = f"protocol error: {e}"
                raise JudgeAbort(f"result is not plain data: {e}") from None
            return value
        if tag == "new" and self._is_class and len(reply) == 2 and type(reply[1]) is int:
            return _Remote(self._chan, ["h", reply[1]])
        if tag == "raise":
            _raise_remote(reply)
        if tag == "bad" and len(reply) == 2 and type(reply[1]) is str:
            raise JudgeAbort(reply[1][:MAX_TEXT])
        self._chan.broken = "protocol error: unexpected reply"
        raise JudgeAbort(self._chan.broken)

    def _value(self) -> Any:
        """A data attribute's value (``obj.size``), fetched as plain data."""
        reply = self._chan.request(["get", self._path])
        if reply[0] == "ok" and len(reply) == 2:
            try:
                return decode(reply[1])
            except NotPlain as e:
                raise JudgeAbort(f"attribute is not plain data: {e}") from None
        if reply[0] == "callable":
            raise JudgeAbort(f"{'.'.join(map(str, self._path[1:]))} is callable, not a value")
        if reply[0] == "raise":
            _raise_remote(reply)
        raise JudgeAbort(str(reply[1])[:MAX_TEXT] if reply[0] == "bad" and len(reply) > 1 else "protocol error")

    def __bool__(self):  # names and handles are not answers; attributes are read as values
        if len(self._path) == 2:
            if self._path[0] == "h":
                raise JudgeAbort("an object handle has no truth value")
            return True
        return bool(self._value())

    def __eq__(self, other):
        return self is other if len(self._path) == 2 else self._value() == other

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return id(self)

    def __repr__(self):
        return f"<program {'.'.join(map(str, self._path[1:]))}>"

    def __setattr__(self, name, value):
        raise JudgeAbort("the judge cannot set attributes on program objects")

    def _binary(op):  # noqa: N805 - builds the value-reading comparison/arithmetic operators
        def method(self, other):
            if len(self._path) == 2:
                raise JudgeAbort(f"{self!r} is not a value")
            return op(self._value(), other)
        return method

    import operator as _op

    __lt__, __le__, __gt__, __ge__ = _binary(_op.lt), _binary(_op.le), _binary(_op.gt), _binary(_op.ge)
    __add__, __sub__, __mul__, __contains__ = _binary(_op.add), _binary(_op.sub), _binary(_op.mul), \
        _binary(lambda a, b: b in a)
    __getitem__ = _binary(_op.getitem)
    del _binary, _op

    def __len__(self):
        return len(self._value())

    def __iter__(self):
        return iter(self._value())


def _build_namespace(chan: _Channel, names: Any) -> dict:
    """The judge's globals: its own builtins, proxies for the program's functions and classes, copies of its plain
    data, and the judge's own copies of modules the program imported. A program's name never shadows a builtin, and
    a name that is a standard module's is always the judge's copy of that module."""
    import importlib

    g: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    if type(names) is not list:
        raise NotPlain("malformed names")
    for item in names[:MAX_NAMES]:
        if type(item) is not list or len(item) != 2 or type(item[0]) is not str or not item[0].isidentifier():
            continue
        name, kind = item
        if hasattr(builtins, name):  # a program's `len`, `sorted`, `abs` ... never shadow the judge's own
            continue
        if name in sys.stdlib_module_names:  # `math` in a test is the judge's math, whatever the program bound there
            kind = ["module", name]
        if kind in ("function", "class"):
            g[name] = _Remote(chan, ["g", name], is_class=kind == "class")
        elif type(kind) is list and len(kind) == 2 and kind[0] == "value":
            try:
                g[name] = decode(kind[1])
            except NotPlain:
                pass
        elif type(kind) is list and len(kind) == 2 and kind[0] == "object" and type(kind[1]) is int:
            g[name] = _Remote(chan, ["h", kind[1]])
        elif type(kind) is list and len(kind) == 2 and kind[0] == "module" and type(kind[1]) is str:
            mod = kind[1]
            if mod in sys.modules:
                g[name] = sys.modules[mod]
            elif mod.partition(".")[0] in SAFE_MODULES:
                try:
                    g[name] = importlib.import_module(mod)
                except Exception:  # noqa: S110 - a module the judge lacks: the test sees a NameError
                    pass
    return g


def judge(sock: socket.socket, tests: list, setup: Any, report: Callable[..., None],
          on_death: Callable[[], str]) -> None:
    """Run ``tests`` (code objects or source) against the program on ``sock``; ``report("test", i, ok, why)`` once
    per test, in order. ``on_death()`` says why the program's channel closed. The caller then sends ``end``."""
    chan = _Channel(sock, on_death)
    try:
        first = chan.wire.recv()
    except NotPlain as e:
        report("runtime", f"protocol error before the tests ran: {e}")
        return
    except OSError:
        first = None
    if first is None:
        report("runtime", on_death() + " before the tests ran")
        return
    if type(first) is not list or len(first) != 2 or first[0] not in ("ready", "compile", "runtime"):
        report("runtime", "protocol error before the tests ran")
        return
    if first[0] != "ready":
        report(first[0], str(first[1])[:MAX_TEXT])
        return
    try:
        g = _build_namespace(chan, first[1])
    except NotPlain as e:
        report("runtime", f"protocol error before the tests ran: {e}")
        return
    try:
        if setup:
            exec(setup if not isinstance(setup, str) else compile(setup, "<setup>", "exec", dont_inherit=True), g)
    except BaseException as e:
        report("runtime", f"setup failed: {type(e).__name__}: {str(e)[:MAX_TEXT]}")
        return
    for i, test in enumerate(tests):
        if chan.broken:
            report("test", i, False, chan.broken)
            continue
        try:
            exec(test if not isinstance(test, str) else compile(test, "<test>", "exec", dont_inherit=True), g)
        except BaseException as e:  # SystemExit inside a test is a failure, not a pass
            report("test", i, False, f"{type(e).__name__}: {str(e)[:200]}")
        else:
            report("test", i, True, "")
    if chan.broken:
        report("runtime", chan.broken)


def end(sock: socket.socket) -> None:
    """Tell the program the tests are over (an honest program then exits)."""
    try:
        send_msg(sock, ["end"])
    except (OSError, NotPlain):
        pass


def exit_reason(status: int, cpu: float, cpu_limit: float) -> str:
    """Why the program's process ended, from its wait status and CPU seconds."""
    import signal

    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in (signal.SIGKILL, signal.SIGXCPU) and cpu >= cpu_limit:
            return "CPU time limit exceeded"
        if sig == signal.SIGXFSZ:
            return "output size limit exceeded"
        try:
            return f"program killed by signal {signal.Signals(sig).name}"
        except ValueError:
            return f"program killed by signal {sig}"
    code = os.WEXITSTATUS(status)
    if code == 128 + signal.SIGXCPU:
        return "CPU time limit exceeded"
    if code == 128 + signal.SIGXFSZ:
        return "output size limit exceeded"
    return f"program exited (code {code})"
