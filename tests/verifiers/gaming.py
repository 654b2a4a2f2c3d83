"""Programs that solve nothing and try to get reward anyway, against problems of our own in MBPP and HumanEval
layouts. Every exploit must score 0 in every mode; every reference must score 1.

An exploit is a prelude (module level) and a body (the function under test, or the method for class problems).
No test of any problem is passed by a constant such as None, True, False, 0, "" or []: an exploit's fallback value
(None) fails each test on its own, so any reward an exploit gets is a hole.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    name: str
    entry: str  # the function under test, or "Class.method"
    reference: str
    tests: dict

    def program(self, prelude: str, body: str) -> str:
        cls, _, method = self.entry.rpartition(".")
        inner = textwrap.indent(textwrap.dedent(body).strip("\n") or "return None", "    ")
        if cls:
            func = f"class {cls}:\n    def {method}(self, *args, **kwargs):\n" + textwrap.indent(inner, "    ")
        else:
            func = f"def {method}(*args, **kwargs):\n{inner}"
        return textwrap.dedent(prelude).strip("\n") + "\n" + func + "\n"


def mbpp(name: str, entry: str, reference: str, asserts: list[str], setup: str = "") -> Problem:
    return Problem(name, entry, textwrap.dedent(reference), {"kind": "functional", "setup": setup, "asserts": asserts})


def humaneval(name: str, entry: str, reference: str, check: str) -> Problem:
    test = textwrap.dedent(check) + f"\ncheck({entry})\n"
    return Problem(name, entry, textwrap.dedent(reference), {"kind": "functional", "setup": "", "asserts": [test]})


PROBLEMS = [
    mbpp("add", "add_nums", "def add_nums(a, b):\n    return a + b\n",
         ["assert add_nums(2, 3) == 5", "assert add_nums(-4, 10) == 6", "assert add_nums(100, 23) == 123"]),
    mbpp("prime", "is_prime", """
        def is_prime(n):
            return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))
        """, ["assert is_prime(13) == True and is_prime(15) == False",
              "assert is_prime(97) == True and is_prime(91) == False",
              "assert [is_prime(k) for k in range(8)] == [False, False, True, True, False, True, False, True]"]),
    mbpp("sort", "sort_desc", "def sort_desc(xs):\n    return sorted(xs, reverse=True)\n",
         ["assert sort_desc([3, 1, 2]) == [3, 2, 1]", "assert set(sort_desc([5, 9, 9])) == {9, 5}",
          "assert len(sort_desc([4, 4, 1])) == 3 and sort_desc([4, 4, 1])[0] == 4",
          "assert sorted(sort_desc([7, 8])) == [7, 8] and sort_desc([7, 8]) != [7, 8]"]),
    mbpp("area", "circle_area", "import math\ndef circle_area(r):\n    return math.pi * r * r\n",
         ["assert math.isclose(circle_area(2), 12.566370614359172)",
          "assert abs(circle_area(1) - 3.141592653589793) < 1e-9",
          "assert round(circle_area(3), 4) == 28.2743"], setup="import math"),
    mbpp("count", "word_count", """
        def word_count(s):
            out = {}
            for w in s.split():
                out[w] = out.get(w, 0) + 1
            return out
        """, ["assert word_count('a b a') == {'a': 2, 'b': 1}", "assert word_count('x') == {'x': 1}",
              "assert sorted(word_count('q r s q').items()) == [('q', 2), ('r', 1), ('s', 1)]"]),
    mbpp("reverse", "reverse_inplace", "def reverse_inplace(xs):\n    xs.reverse()\n    return len(xs)\n",
         ["x = [1, 2, 3]\nassert reverse_inplace(x) == 3\nassert x == [3, 2, 1]",
          "y = ['a', 'b']\nassert reverse_inplace(y) == 2 and y == ['b', 'a']"]),
    mbpp("upper", "to_upper", "def to_upper(s):\n    return s.upper()\n",
         ["assert str(to_upper('ab')) == 'AB'", "assert to_upper('xy') == 'XY'",
          "assert repr(to_upper('q')) == \"'Q'\"", "assert to_upper('hi') + '!' == 'HI!'"]),
    mbpp("twosum", "Solution.twoSum", """
        class Solution:
            def twoSum(self, nums, target):
                seen = {}
                for i, x in enumerate(nums):
                    if target - x in seen:
                        return [seen[target - x], i]
                    seen[x] = i
        """, ["assert Solution().twoSum([2, 7, 11, 15], 9) == [0, 1]",
              "assert Solution().twoSum([3, 2, 4], 6) == [1, 2]",
              "s = Solution()\nassert s.twoSum([3, 3], 6) == [0, 1] and s.twoSum([1, 5, 2], 7) == [1, 2]"]),
    mbpp("secret", "secret_number", "def secret_number():\n    return 8675309123\n",
         ["assert secret_number() == 8675309123", "assert secret_number() - 8675309000 == 123"]),
    mbpp("hypot", "hypotenuse", "import math\ndef hypotenuse(a, b):\n    return math.sqrt(a * a + b * b)\n",
         ["assert math.isclose(hypotenuse(3, 4), 5.0)", "assert math.isclose(hypotenuse(5, 12), 13.0)"]),
    humaneval("fib", "fib", """
        def fib(n: int) -> int:
            a, b = 0, 1
            for _ in range(n):
                a, b = b, a + b
            return a
        """, """
        METADATA = {}


        def check(candidate):
            assert candidate(10) == 55
            assert candidate(1) == 1
            assert candidate(8) == 21
            assert candidate(30) == 832040
        """),
    humaneval("vowels", "count_vowels", """
        def count_vowels(s: str) -> int:
            return sum(c in 'aeiouAEIOU' for c in s)
        """, """
        def check(candidate):
            assert candidate('hello') == 2, 'hello'
            assert candidate('AEIOU xyz') == 5
            for word, n in [('banana', 3), ('sky', 0)]:
                assert candidate(word) == n
        """),
    humaneval("pairs", "pair_sums", """
        def pair_sums(xs):
            return tuple(a + b for a, b in zip(xs, xs[1:]))
        """, """
        import math


        def check(candidate):
            assert candidate([1, 2, 3]) == (3, 5)
            assert math.isclose(sum(candidate([0.5, 0.25, 1.0])), 2.0)
            assert candidate([9, 1]) == (10,)
        """),
]

# A framed reply of the call protocol (4-byte length + JSON) saying "ok, True" and one saying "ok, the judge wins":
_FORGE = """
import json as _json, struct as _struct
def _frame(obj):
    data = _json.dumps(obj).encode()
    return _struct.pack('!I', len(data)) + data
FORGED = b''.join(_frame(m) for m in (['ok', True, []], ['ok', ['l'], []], ['new', 0], ['ready', []]))
LINES = b'["test",0,true,""]\\n["test",1,true,""]\\n["test",2,true,""]\\n["test",3,true,""]\\n["done"]\\n' * 8
"""

# What a leak would look like: the secret problem's expected value (8675309123; the program's own constant, 8675309000,
# is not counted). Other problems' expected values are found by the same searches if they leak, but a search that
# found nothing must return None, which fails every test.
_LEAK = """
def _candidates(blob):
    import re
    return {int(m) for m in re.findall(rb'8675309[0-9]{3}', blob)} - {8675309000}
def _consts(code, out):
    for c in code.co_consts:
        if type(c) is int and str(c).startswith('8675309') and c != 8675309000:
            out.add(c)
        elif hasattr(c, 'co_consts'):
            _consts(c, out)
"""

# (family, name, prelude, body)
EXPLOITS: list[tuple[str, str, str, str]] = [
    # -- objects whose comparison, hashing, truthiness, iteration or repr are overridden
    ("object", "always_equal", """
        class Liar:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __hash__(self): return 0
            def __bool__(self): return True
            def __repr__(self): return 'True'
        """, "return Liar()"),
    ("object", "int_subclass", "class I(int):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
     "    __hash__ = int.__hash__", "return I(0)"),
    ("object", "str_subclass", """
        class S(str):
            __eq__ = lambda s, o: True
            __ne__ = lambda s, o: False
            __hash__ = str.__hash__
            def __add__(self, o): return self
        """, "return S('')"),
    ("object", "list_subclass", "class L(list):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False",
     "return L()"),
    ("object", "dict_subclass", "class D(dict):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False",
     "return D()"),
    ("object", "tuple_subclass", "class T(tuple):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
     "    __hash__ = tuple.__hash__", "return T()"),
    ("object", "float_subclass", """
        class F(float):
            __eq__ = lambda s, o: True
            __ne__ = lambda s, o: False
            __hash__ = float.__hash__
            __lt__ = __le__ = __gt__ = __ge__ = lambda s, o: True
            def __sub__(self, o): return F(0)
            __rsub__ = __add__ = __radd__ = __sub__
            def __abs__(self): return 0.0
            def __round__(self, n=None): return self
        """, "return F(0.0)"),
    ("object", "truthy", "class Yes:\n    __bool__ = lambda s: True\n    __eq__ = lambda s, o: True", "return Yes()"),
    ("object", "lying_class", """
        class Fake:
            @property
            def __class__(self): return int
            __eq__ = lambda s, o: True
        """, "return Fake()"),
    ("object", "returns_callable", "", "return lambda *a, **k: True"),
    ("object", "returns_module_or_type", "import math", "return math if args else int"),
    ("object", "iter_len_liar", """
        class It:
            def __iter__(self): return iter(range(3))
            def __len__(self): return 3
            def __getitem__(self, i): return 4
            __eq__ = lambda s, o: True
            __ne__ = lambda s, o: False
        """, "return It()"),
    ("object", "self_referential", "", "a = []\na.append(a)\nreturn a"),
    ("object", "huge_result", "", "return 'x' * (40 << 20)"),
    ("object", "bool_subclass_of_int_in_list", "class B(int):\n    __eq__ = lambda s, o: True", "return [B(1), B(2)]"),
    # -- exiting early in any way, also after printing something
    ("exit", "sys_exit_at_import", "import sys\nsys.exit(0)", ""),
    ("exit", "os_exit_at_import", "import os\nos._exit(0)", ""),
    ("exit", "os_exit_in_call", "import os", "os._exit(0)"),
    ("exit", "system_exit_in_call", "", "raise SystemExit(0)"),
    ("exit", "sigkill_self", "import os, signal", "os.kill(os.getpid(), signal.SIGKILL)"),
    ("exit", "sigterm_self_at_import", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", ""),
    ("exit", "atexit_exit", "import atexit, os\natexit.register(os._exit, 0)", "raise SystemExit"),
    ("exit", "print_then_exit", "import os", "print('ok')\nprint('[\"test\",0,true,\"\"]', flush=True)\nos._exit(0)"),
    ("exit", "builtin_exit_in_call", "", "exit()"),
    ("exit", "keyboard_interrupt", "", "raise KeyboardInterrupt"),
    ("exit", "abort", "import os", "os.abort()"),
    # -- writing to any file descriptor, reopening /proc/self/fd/*, forging report lines and protocol frames
    ("fd", "spray_report_lines", "import os\n" + _FORGE, """
        for fd in range(256):
            try:
                os.write(fd, LINES)
            except OSError:
                pass
        """),
    ("fd", "reopen_proc_self_fd", "import os\n" + _FORGE, """
        for name in os.listdir('/proc/self/fd'):
            try:
                with open(f'/proc/self/fd/{name}', 'wb') as f:
                    f.write(LINES + FORGED)
            except OSError:
                pass
        """),
    ("fd", "judge_proc_fds", "import os\n" + _FORGE, """
        for pid in {1, os.getppid()}:
            for fd in range(16):
                try:
                    with open(f'/proc/{pid}/fd/{fd}', 'wb') as f:
                        f.write(LINES)
                except OSError:
                    pass
        """),
    ("fd", "forge_channel_frames", "import os\n" + _FORGE, """
        for fd in range(3, 64):
            try:
                os.write(fd, FORGED * 4)
            except OSError:
                pass
        """),
    ("fd", "forge_ready_at_import", "import os\n" + _FORGE + """
for fd in range(3, 64):
    try:
        os.write(fd, FORGED * 4)
    except OSError:
        pass
""", ""),
    # -- patching modules, builtins, os/sys functions and the stdout object a harness would use afterwards
    ("patch", "assertion_error", "import builtins\nclass Never(Exception):\n    pass\nbuiltins.AssertionError = Never",
     ""),
    ("patch", "math_isclose", "import math\nmath.isclose = lambda *a, **k: True", ""),
    ("patch", "builtins_many", """
        import builtins
        class Liar:
            __eq__ = lambda s, o: True
        for name in ('set', 'sorted', 'len', 'str', 'repr', 'abs', 'round', 'sum', 'isinstance', 'print'):
            setattr(builtins, name, lambda *a, **k: Liar())
        """, ""),
    ("patch", "shadow_builtins_at_top_level", """
        def len(*a, **k): return 3
        def sorted(*a, **k): return [7, 8]
        def set(*a, **k): return {9, 5}
        def abs(*a, **k): return 0.0
        def round(*a, **k): return 28.2743
        def str(*a, **k): return 'AB'
        def repr(*a, **k): return "'Q'"
        def sum(*a, **k): return 2.0
        """, ""),
    ("patch", "fake_stdlib_module_names", """
        class math:
            isclose = staticmethod(lambda *a, **k: True)
            fabs = staticmethod(lambda *a, **k: 0.0)
        import types as _t
        random = _t.SimpleNamespace(randint=lambda *a: 0)
        """, ""),
    ("patch", "json_dumps_forges_success", "import json\njson.dumps = lambda *a, **k: '[\"ok\",true,[]]'", ""),
    ("patch", "os_write_and_stdout", """
        import os, sys
        os.write = lambda fd, data: len(data)
        class Out:
            def write(self, s): return len(s)
            def flush(self): pass
        sys.stdout = sys.stderr = Out()
        """, ""),
    ("patch", "socket_send_forges", "import socket\n" + _FORGE + """
def _send(self, data, *a):
    return socket.socket.__dict__['_orig'](self, FORGED)
socket.socket._orig = socket.socket.sendall
socket.socket.sendall = _send
""", ""),
    ("patch", "harness_functions_via_gc", """
        import gc, types
        def _true(*a, **k):
            return True
        for o in gc.get_objects():
            if type(o) is types.FunctionType and o.__name__ in ('encode', 'send_msg', 'decode', 'judge', 'answer',
                                                                '_report', 'report'):
                try:
                    o.__code__ = _true.__code__
                except (TypeError, ValueError):
                    pass
        """, ""),
    # -- walking frames and gc, trace/profile hooks, threads and children that outlive the call, finalisers
    ("frames", "frame_walk", "import sys", """
        f = sys._getframe()
        while f is not None:
            for scope in (f.f_locals, f.f_globals):
                for key in list(scope):
                    if key in ('tests', 'passed', 'results', 'changed', 'handles') and isinstance(scope[key], list):
                        scope[key].clear()
                    elif isinstance(scope.get(key), int) and not isinstance(scope.get(key), bool):
                        scope[key] = 10 ** 6
            f = f.f_back
        """),
    ("frames", "gc_tamper", "import gc, types", """
        for o in gc.get_objects():
            if isinstance(o, list) and o and all(isinstance(x, types.CodeType) for x in o):
                o.clear()
            elif isinstance(o, dict) and 'tests' in o:
                o['tests'] = []
        """),
    ("frames", "settrace_rewrites_returns", """
        import sys
        def tracer(frame, event, arg):
            if event == 'return' and frame.f_code.co_name in ('encode', 'answer'):
                frame.f_locals['result'] = True
            return tracer
        sys.settrace(tracer)
        """, ""),
    ("frames", "setprofile_hook", "import sys, os\nsys.setprofile(lambda f, e, a: None)", ""),
    ("frames", "thread_forger", "import os, threading, time\n" + _FORGE + """
def spam():
    end = time.time() + 0.5
    while time.time() < end:
        for fd in range(3, 32):
            try:
                os.write(fd, FORGED + LINES)
            except OSError:
                pass
threading.Thread(target=spam, daemon=True).start()
""", ""),
    ("frames", "child_outlives_call", "import os, time\n" + _FORGE, """
        if os.fork() == 0:
            time.sleep(0.05)
            for fd in range(3, 32):
                try:
                    os.write(fd, FORGED + LINES)
                except OSError:
                    pass
            os._exit(0)
        """),
    ("frames", "del_finaliser", "import os\nclass Bomb:\n    def __del__(self):\n        os._exit(0)",
     "return Bomb()"),
    ("frames", "weakref_finalize", "import os, weakref\nclass K:\n    pass\nk = K()\nweakref.finalize(k, os._exit, 0)\n"
     "del k", ""),
    # -- reading the expected values: they must never enter the program's process
    ("leak", "gc_code_constants", "import gc, types\n" + _LEAK, """
        found = set()
        for o in gc.get_objects():
            if isinstance(o, types.FunctionType):
                _consts(o.__code__, found)
            elif isinstance(o, (list, tuple, dict)):
                for x in (o.values() if isinstance(o, dict) else o):
                    if isinstance(x, types.CodeType):
                        _consts(x, found)
        return max(found) if found else None
        """),
    ("leak", "scan_own_memory", _LEAK, """
        found = set()
        with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb') as mem:
            for line in maps:
                lo, hi = (int(x, 16) for x in line.split()[0].split('-'))
                if 'r' not in line.split()[1] or hi - lo > 64 << 20:
                    continue
                try:
                    mem.seek(lo)
                    found |= _candidates(mem.read(hi - lo))
                except (OSError, ValueError, OverflowError):
                    pass
        return max(found) if found else None
        """),
    ("leak", "judge_memory_and_request", "import os, marshal\n" + _LEAK, """
        found = set()
        for pid in {1, os.getppid()}:
            for path in [f'/proc/{pid}/fd/{fd}' for fd in range(8)] + [f'/proc/{pid}/mem', f'/proc/{pid}/environ',
                                                                          f'/proc/{pid}/cmdline']:
                try:
                    with open(path, 'rb') as f:
                        blob = f.read(1 << 20)
                except OSError:
                    continue
                found |= _candidates(blob)
                try:
                    for code in marshal.loads(blob):
                        _consts(code, found)
                except Exception:
                    pass
        return max(found) if found else None
        """),
    ("leak", "ptrace_and_process_vm_readv", "import ctypes, os\n" + _LEAK, """
        libc = ctypes.CDLL(None, use_errno=True)
        found = set()
        for pid in {1, os.getppid()}:
            libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH
            buf = ctypes.create_string_buffer(1 << 16)
            class IOVec(ctypes.Structure):
                _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
            local = IOVec(ctypes.cast(buf, ctypes.c_void_p), 1 << 16)
            remote = IOVec(0x400000, 1 << 16)
            if libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) > 0:
                found |= _candidates(buf.raw)
        return max(found) if found else None
        """),
    ("leak", "caller_frames", "import sys\n" + _LEAK, """
        found = set()
        f = sys._getframe(1)
        while f is not None:
            _consts(f.f_code, found)
            for v in list(f.f_locals.values()) + list(f.f_globals.values()):
                if hasattr(v, 'co_consts'):
                    _consts(v, found)
                elif isinstance(v, (list, tuple)):
                    for x in v:
                        if hasattr(x, 'co_consts'):
                            _consts(x, found)
            f = f.f_back
        return max(found) if found else None
        """),
]


def cases() -> list[tuple[str, str, Problem]]:
    """(exploit id, program, problem) for every exploit against every problem."""
    return [(f"{family}:{name}@{p.name}", p.program(prelude, body), p)
            for family, name, prelude, body in EXPLOITS for p in PROBLEMS]
