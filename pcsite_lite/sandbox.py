"""Service loader: compile a PSP's service source under the site's rules (paper §2.4).

A service is a Python module that defines ``process(pkt)`` (see ``docs/services.md``). Before
the site runs it, :func:`load_service`:

1. parses the source and **rejects** (``ServiceLoadError``) what could reach past the Packet
   API: any name or attribute starting with ``_`` (``pkt._buf``, ``x.__class__``, ...), the
   builtins that reach objects by name or run code (``getattr``, ``eval``, ``open``,
   ``type``, ...), attribute names that lead to frames or format strings (``f_back``,
   ``gi_frame``, ``"{0._x}".format``, ...), ``async`` code, and imports other than
   :data:`ALLOWED_IMPORTS`;
2. **instruments** it for the CPU budget: a call to the budget's tick is inserted at the top of
   every function body and loop body and into every comprehension, so ``while True: pass``
   ticks; :class:`Budget` raises :class:`BudgetExceeded` (a ``BaseException``, so a service's
   ``except Exception`` cannot swallow it) once the per-packet tick budget or wall-clock
   deadline (checked every :data:`CLOCK_EVERY` ticks) is spent; after the first overrun every
   further tick raises again, so no ``try``/``except`` in a loop can keep the service running;
3. executes the module once in a fresh namespace whose builtins are :data:`SAFE_BUILTINS`;
   ``import`` gives the service its own copy of each allowed module (assigning
   ``zlib.compress`` changes only that copy).

:func:`compile_service` does steps 1-2 without running anything.

Why not RestrictedPython: it enforces its policy with runtime guards on every attribute and
item access (``_getattr_``, ``_getitem_``, ...), which costs more per packet than the whole
pipeline budget; the static checks here cover the same escape routes for the subset services
need, and the only runtime cost is one tick per function call and loop iteration.

What this is not: an OS-level sandbox. CPython has no in-process isolation boundary; a long
*C-level* call (``sum(range(10**10))``, huge ``pow``) cannot be interrupted until it returns,
and memory is not bounded. These rules are the first line of defence; the boundary is the
kernel: :mod:`pcsite_lite.confine` runs each provider's service in its own confined process
(and checks uploads in a throw-away one). Loading a service in process, as here, is the
*trusted lane* (the simulator, built-ins, operator-certified services); ``docs/security.md``
says what each mode guarantees.
"""

from __future__ import annotations

import ast
import builtins
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ALLOWED_IMPORTS",
    "BUDGET",
    "CLOCK_EVERY",
    "FORBIDDEN_ATTRIBUTES",
    "FORBIDDEN_NAMES",
    "SAFE_BUILTINS",
    "TICK_BACKSTOP_NS",
    "Budget",
    "BudgetExceeded",
    "LoadedService",
    "ServiceLoadError",
    "ServiceUnavailable",
    "compile_service",
    "load_service",
    "tick_budget",
]

#: Modules a service may import: pure, with no attribute that leads to another module.
ALLOWED_IMPORTS: Final = frozenset({"math", "struct", "zlib", "binascii"})

_SAFE_NAMES: Final = (
    "abs all any ascii bin bool bytearray bytes callable chr complex dict divmod enumerate "
    "filter float frozenset hash hex int isinstance issubclass iter len list map max min next "
    "oct ord pow range repr reversed round set slice sorted str sum tuple zip "
    "ArithmeticError AssertionError AttributeError Exception IndexError KeyError LookupError "
    "NameError OverflowError RuntimeError StopIteration TypeError ValueError ZeroDivisionError "
    "True False None"
).split()

#: Builtin names whose use is rejected at load time (they reach objects by name, run code,
#: touch files or the interpreter).
FORBIDDEN_NAMES: Final = frozenset(
    {
        "getattr",
        "setattr",
        "delattr",
        "hasattr",
        "vars",
        "dir",
        "globals",
        "locals",
        "type",
        "object",
        "super",
        "eval",
        "exec",
        "compile",
        "open",
        "input",
        "print",
        "breakpoint",
        "help",
        "memoryview",
        "format",
        "classmethod",
        "staticmethod",
        "property",
        "exit",
        "quit",
        "BaseException",
        "GeneratorExit",
        "KeyboardInterrupt",
        "SystemExit",
    }
)

#: Attribute names rejected at load time besides every ``_``-prefixed one: frame and code
#: objects of generators, coroutines and tracebacks, and format-string attribute lookups.
FORBIDDEN_ATTRIBUTES: Final = frozenset(
    {
        "format",
        "format_map",
        "mro",
        "gi_frame",
        "gi_code",
        "gi_yieldfrom",
        "cr_frame",
        "cr_code",
        "cr_await",
        "ag_frame",
        "ag_code",
        "f_back",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_code",
        "tb_frame",
        "tb_next",
        "co_code",
        "with_traceback",
    }
)

#: How often (in ticks) the budget also compares the clock against the deadline.
CLOCK_EVERY: Final = 256

_TICK: Final = "__pc_tick__"
_TYPE_PARAMS: Final = frozenset({"TypeVar", "ParamSpec", "TypeVarTuple"})


class ServiceLoadError(Exception):
    """Service source the site refuses to load. ``reason`` is one of ``syntax``,
    ``forbidden_name``, ``forbidden_attribute``, ``forbidden_import``, ``forbidden_syntax``,
    ``no_process``, ``load_error``, ``load_timeout``; ``lineno`` points at the offence."""

    def __init__(self, reason: str, detail: str, lineno: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.lineno = lineno
        where = f" (line {lineno})" if lineno else ""
        super().__init__(f"{reason}: {detail}{where}")


class ServiceUnavailable(Exception):
    """The service's confined process is (re)starting, or the packet's batch was lost with a
    process already blamed once: the packet is dropped with ``reason`` (``service_unavailable``
    unless told) and the service is not blamed again (see :mod:`pcsite_lite.confine`)."""

    def __init__(self, detail: str, reason: str = "service_unavailable") -> None:
        super().__init__(detail)
        self.reason = reason


class BudgetExceeded(BaseException):
    """Raised inside service code when it overruns its per-packet budget."""


class Budget:
    """Per-call CPU budget of service code: ``ticks`` (function calls + loop iterations) and
    a wall-clock deadline ``max_ns`` after :meth:`start`, checked every :data:`CLOCK_EVERY`
    ticks with ``clock`` (``time.perf_counter_ns`` unless a test injects one)."""

    __slots__ = ("clock", "deadline", "left", "max_ns", "max_ticks", "overrun")

    def __init__(
        self,
        *,
        max_ticks: int = 100_000,
        max_ns: int = 10_000_000,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.max_ticks = max_ticks
        self.max_ns = max_ns
        self.clock = clock
        self.left = max_ticks
        self.deadline = 0
        self.overrun = False

    def start(self, now_ns: int) -> None:
        """Arm the budget for one call that starts at ``now_ns`` (of :attr:`clock`)."""
        self.left = self.max_ticks
        self.deadline = now_ns + self.max_ns
        self.overrun = False

    def tick(self) -> bool:
        """Called by instrumented service code; always True (usable inside comprehensions)."""
        left = self.left - 1
        self.left = left
        if left % CLOCK_EVERY == 0 or left < 0:
            self._check(left)
        return True

    def charge(self, ticks: int) -> None:
        """Count a building block's work as ``ticks`` and check the clock (it may overrun the
        budget: :class:`BudgetExceeded`, as a loop's tick would)."""
        left = self.left - ticks
        self.left = left
        self._check(left)

    def _check(self, left: int) -> None:
        if left < 0 or self.clock() > self.deadline:
            self.left = -1
            self.overrun = True
            raise BudgetExceeded


#: The budget instrumented code ticks against. The pipeline is single-threaded per process
#: (one pipeline runs at a time), so one budget serves every loaded service.
BUDGET: Final = Budget()

#: The wall-clock deadline of :func:`tick_budget`: a backstop only (5 s per packet).
TICK_BACKSTOP_NS: Final = 5_000_000_000


def tick_budget(max_ticks: int = 100_000) -> Budget:
    """A per-packet budget for deterministic runs (the simulator, in-process example networks,
    benchmarks): ``max_ticks`` bounds the service, so a packet's verdict does not depend on how
    busy the machine is (a wall-clock deadline of a few ms fails a legitimate packet whenever
    the thread is descheduled for that long); the wall-clock deadline, :data:`TICK_BACKSTOP_NS`,
    is only a backstop. Real sites keep :data:`BUDGET`'s per-packet deadline."""
    return Budget(max_ticks=max_ticks, max_ns=TICK_BACKSTOP_NS)


def _module_copy(name: str) -> types.ModuleType:
    """A fresh module object holding the public attributes of allowed module ``name``: a
    service that assigns ``zlib.compress = f`` changes only its own copy, never the module
    the platform (or another service) calls."""
    real = __import__(name)
    copy = types.ModuleType(name)
    for attr, value in vars(real).items():
        if not attr.startswith("_"):
            setattr(copy, attr, value)
    return copy


def _importer() -> Callable[..., types.ModuleType]:
    """A service's ``__import__``: allowed modules only, each a copy private to the service
    (one copy per module per loaded service, so ``import zlib`` twice gives the same one)."""
    copies: dict[str, types.ModuleType] = {}

    def safe_import(
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level != 0 or name not in ALLOWED_IMPORTS:
            raise ImportError(f"services may import only {sorted(ALLOWED_IMPORTS)}")
        mod = copies.get(name)
        if mod is None:
            mod = copies[name] = _module_copy(name)
        return mod

    return safe_import


#: The builtins a service sees (each loaded service gets its own copy of this dict, with its
#: own ``__import__``; see :func:`_importer`).
SAFE_BUILTINS: Final[dict[str, Any]] = {
    name: getattr(builtins, name) for name in _SAFE_NAMES if hasattr(builtins, name)
}


class _Policy(ast.NodeVisitor):
    """Rejects what could reach past the Packet API (see module docstring)."""

    def _fail(self, reason: str, detail: str, node: ast.AST) -> None:
        raise ServiceLoadError(reason, detail, getattr(node, "lineno", None))

    def _name(self, name: str, node: ast.AST) -> None:
        if name.startswith("_") and name != "_":
            self._fail("forbidden_name", f"names starting with '_' are reserved: {name}", node)
        if name in FORBIDDEN_NAMES:
            self._fail("forbidden_name", f"{name} is not available to services", node)

    def visit_Name(self, node: ast.Name) -> None:
        self._name(node.id, node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            self._fail("forbidden_attribute", f"private attribute .{node.attr}", node)
        if node.attr in FORBIDDEN_ATTRIBUTES:
            self._fail("forbidden_attribute", f".{node.attr} is not available to services", node)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._name(node.name, node)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._name(node.name, node)
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self._name(node.arg, node)

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            self._name(name, node)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        for name in node.names:
            self._name(name, node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self._name(node.name, node)
        self.generic_visit(node)

    def visit_alias(self, node: ast.alias) -> None:
        for name in (node.name, node.asname):
            if name is not None and name != "*":
                self._name(name.split(".")[0], node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name not in ALLOWED_IMPORTS:
                self._fail("forbidden_import", f"import {alias.name}", node)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or node.module not in ALLOWED_IMPORTS:
            self._fail("forbidden_import", f"from {node.module} import ...", node)
        for alias in node.names:
            if alias.name == "*":
                self._fail("forbidden_import", "import *", node)
        self.generic_visit(node)

    # Every other form that binds a name without an ast.Name node: match capture patterns
    # (``case x``, ``case [*x]``, ``case {**x}``, ``case p as x``) and type parameters. The
    # forms that bind through an ast.Name (assignment, walrus, for/with/del targets) reach
    # visit_Name; except-as, import-as, global/nonlocal and def/class names are checked above.
    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name is not None:
            self._name(node.name, node)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name is not None:
            self._name(node.name, node)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest is not None:
            self._name(node.rest, node)
        self.generic_visit(node)

    def generic_visit(self, node: ast.AST) -> None:
        # type parameters (``def f[T]``, ``type X = ...``; Python >= 3.12) bind a bare name
        name = getattr(node, "name", None) if type(node).__name__ in _TYPE_PARAMS else None
        if isinstance(name, str):
            self._name(name, node)
        super().generic_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for attr in node.kwd_attrs:
            if attr.startswith("_") or attr in FORBIDDEN_ATTRIBUTES:
                self._fail("forbidden_attribute", f"class pattern attribute {attr}", node)
        self.generic_visit(node)

    def _no_async(self, node: ast.AST) -> None:
        self._fail("forbidden_syntax", f"{type(node).__name__} is not available", node)

    visit_AsyncFunctionDef = _no_async
    visit_AsyncFor = _no_async
    visit_AsyncWith = _no_async
    visit_Await = _no_async


def _tick_call() -> ast.Call:
    return ast.Call(func=ast.Name(id=_TICK, ctx=ast.Load()), args=[], keywords=[])


class _Instrument(ast.NodeTransformer):
    """Inserts budget ticks into function bodies, loop bodies and comprehensions."""

    def _prepend(self, body: list[ast.stmt]) -> list[ast.stmt]:
        return [ast.Expr(value=_tick_call()), *body]

    def _tick_body(self, node: ast.FunctionDef | ast.While | ast.For) -> ast.AST:
        self.generic_visit(node)
        node.body = self._prepend(node.body)
        return node

    visit_FunctionDef = visit_While = visit_For = _tick_body

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self.generic_visit(node)
        node.body = ast.BoolOp(op=ast.And(), values=[_tick_call(), node.body])
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        node.ifs = [_tick_call(), *node.ifs]
        return node


def compile_service(source: str | bytes, name: str = "<service>") -> types.CodeType:
    """Parse ``source``, apply the rules and instrument it; return the code object (nothing of
    the service runs). Raises :class:`ServiceLoadError`."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServiceLoadError("syntax", f"service source is not UTF-8: {exc}") from None
    try:
        tree = ast.parse(source, filename=name)
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in the source
        lineno = getattr(exc, "lineno", None)
        raise ServiceLoadError("syntax", str(getattr(exc, "msg", exc)), lineno) from None
    except RecursionError:
        raise ServiceLoadError("syntax", "source nested too deeply") from None
    try:
        _Policy().visit(tree)
        tree = ast.fix_missing_locations(_Instrument().visit(tree))
        return compile(tree, name, "exec")
    except RecursionError:
        raise ServiceLoadError("syntax", "source nested too deeply") from None


@dataclass(frozen=True, slots=True)
class LoadedService:
    """A loaded service: its ``process(pkt)`` entry point and the module namespace."""

    name: str
    process: Callable[[Any], object]
    namespace: dict[str, Any]
    version: str | None = None


def load_service(
    source: str | bytes,
    name: str = "<service>",
    *,
    budget: Budget = BUDGET,
    version: str | None = None,
) -> LoadedService:
    """Check, instrument, compile and execute service ``source``; return its entry point.

    Raises :class:`ServiceLoadError` if the source breaks a rule, does not define a callable
    ``process``, raises while loading, or overruns ``budget`` at load time.
    """
    code = compile_service(source, name)
    builtins_ = dict(SAFE_BUILTINS)
    builtins_["__import__"] = _importer()
    namespace: dict[str, Any] = {
        "__builtins__": builtins_,
        "__name__": name,
        _TICK: budget.tick,
    }
    budget.start(budget.clock())
    try:
        exec(code, namespace)
    except BudgetExceeded:
        raise ServiceLoadError("load_timeout", "module code overran its budget") from None
    except Exception as exc:
        raise ServiceLoadError("load_error", f"{type(exc).__name__}: {exc}") from None
    process = namespace.get("process")
    if not callable(process):
        raise ServiceLoadError("no_process", "a service must define process(pkt)")
    return LoadedService(name=name, process=process, namespace=namespace, version=version)
