"""How an engine calls its plugins: the hooks of the plugins in its plan,
each implementation called directly (one Python call per implementing
plugin per event, not pluggy's loop, since the step hooks run every
micro-batch), a failure named by plugin and hook, and each event's answers
combined as its specification says (chained, first answer, merged).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence

from autotune.errors import TrainingError
from autotune.plugin.specs import step_hook_names


@dataclass(frozen=True)
class HookCall:
    """One plugin's implementation of one hook, called by keyword with the
    arguments it declares."""

    plugin: str
    hook: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]

    def __call__(self, **kwargs: Any) -> Any:
        try:
            return self.function(**{a: kwargs[a] for a in self.argnames})
        except (TrainingError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - name the plugin
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise TrainingError(f"plugin {self.plugin!r} failed in {self.hook}: "
                                f"{type(exc).__name__}: {first}") from exc


def hook_calls(manager: Any, hook: str, plugins: Iterable[str]) -> list[HookCall]:
    """The implementations of ``hook`` among ``plugins``, in call order
    (``tryfirst``, registration order, ``trylast``)."""
    return [HookCall(plugin, hook, function, tuple(args))
            for plugin, function, args in manager.step_hooks(hook, plugins)]


class PluginHooks:
    """The hooks the engine calls itself (the specs' step, epoch and state
    phases), for the plugins in one engine's plan."""

    def __init__(self, calls: Mapping[str, Sequence[HookCall]] | None = None) -> None:
        self._calls = {name: tuple(found) for name, found in (calls or {}).items()}

    @classmethod
    def of(cls, manager: Any, plugins: Iterable[str]) -> "PluginHooks":
        wanted = tuple(plugins)
        return cls({name: hook_calls(manager, name, wanted) for name in step_hook_names()})

    def __getitem__(self, hook: str) -> tuple[HookCall, ...]:
        return self._calls.get(hook, ())

    def implementers(self) -> dict[str, list[str]]:
        """``{event: [plugin, ...]}`` for each event some plugin takes part
        in, named without the ``autotune_`` prefix (``describe()``)."""
        return {name[len("autotune_"):]: [c.plugin for c in found]
                for name, found in self._calls.items() if found}

    def chain(self, hook: str, key: str, value: Any, **kwargs: Any) -> Any:
        """Each implementation gets ``key=value`` as changed so far; an
        answer other than None replaces it."""
        for call in self[hook]:
            changed = call(**kwargs, **{key: value})
            if changed is not None:
                value = changed
        return value

    def first(self, hook: str, **kwargs: Any) -> tuple[str, Any] | None:
        """``(plugin, answer)`` of the first implementation that answers."""
        for call in self[hook]:
            answer = call(**kwargs)
            if answer is not None:
                return call.plugin, answer
        return None

    def each(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """``(plugin, answer)`` of every implementation, in call order."""
        return [(call.plugin, call(**kwargs)) for call in self[hook]]

    def merged(self, hook: str, **kwargs: Any) -> dict[str, Any]:
        """Every answer (a mapping) merged, a later key over an earlier one."""
        out: dict[str, Any] = {}
        for _plugin, answer in self.each(hook, **kwargs):
            out.update(answer or {})
        return out


@contextmanager
def nested(contexts: Sequence[ContextManager[Any]]) -> Iterator[ExitStack]:
    """Every context in ``contexts`` entered, the first outermost."""
    with ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield stack
