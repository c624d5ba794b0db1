"""``Agent``: a model, tools and settings; each ``run`` is one :class:`~xzatoma.Run` driven
by the agent loop (:mod:`xzatoma._loop`).

Every way a run can end is a ``RunResult`` (complete, incomplete, failed) except the
caller's own cancellation, which propagates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._hooks import Hook, Hooks, Instrument
from ._limits import Quota, QuotaLimits, as_tracker, check_count, check_timeout
from ._loop import RunLoop
from ._pricing import CallPrice, Price, Pricing, as_pricing
from ._result import RunResult
from ._run import Run, loop_clock
from ._session import session_id_or_new
from ._tools import Tool
from ._types import ToolSpec
from .errors import ConfigError
from .providers._base import Provider

__all__ = ("Agent", "one_quota", "tools_by_name")


def one_quota(quota: Quota | None, tools: Sequence[Tool[Any]]) -> Quota | None:
    """The one quota of a tree: the agent's, or the one its subagent tools were given.

    A tree has one tracker (its spawns reserve from it, all its model calls are charged to
    it), so two different ones are a :class:`ConfigError` rather than two limits each
    half-enforced.
    """
    trackers: dict[int, Quota] = {}
    for t in tools:
        theirs = getattr(getattr(t, "spawner", None), "quota", None)  # a subagent tool's
        if theirs is not None:  # a spawner's quota (as_tracker checked it)
            trackers[id(theirs)] = theirs
    if len(trackers) > 1:
        raise ConfigError(
            "the subagent tools were given different quota trackers (two QuotaLimits make "
            "two trackers); give both the same QuotaTracker, or give the agent the quota"
        )
    if not trackers:
        return quota
    (shared,) = trackers.values()
    if quota is not None and quota is not shared:
        raise ConfigError(
            "the agent's quota and its subagent tools' quota are different trackers; give "
            "the quota to the agent only (its subagent tools then use it)"
        )
    return shared


def tools_by_name(tools: Sequence[Tool[Any]]) -> dict[str, Tool[Any]]:
    """``tools`` by name; two with one name are a :class:`ConfigError`."""
    by_name: dict[str, Tool[Any]] = {}
    for t in tools:
        if t.name in by_name:
            raise ConfigError(f"two tools are named {t.name!r}; tool names must be unique")
        by_name[t.name] = t
    return by_name


class Agent:
    """An agent: a model, tools, and a loop that runs until the model answers.

    Args:
        provider: The model to call (any :class:`xzatoma.Provider`).
        tools: Tools the model may call. Names must be unique.
        system_prompt: Sent first in every run, when given.
        max_turns: Model calls per run; past it the run ends ``incomplete``.
        name: Shown in spans and as the root run's label.
        timeout: Seconds a run may take; past it the run ends ``failed`` / ``timeout``.
        hooks: Subscribers (telemetry, progress, your own), shared by every subagent.
        quota: The quota the tree's model calls are charged to: a :class:`QuotaTracker` to
            share, or :class:`QuotaLimits` for a tracker of its own (see ``Runtime``).
        pricing: Where the tree's prices come from: a :class:`Pricing`, or prices by model
            name (``{"my-model": Price(0.1, 0.4)}``) looked up before genai-prices' bundled
            data (the default, alone).
        session_id: The tree's session id, on every span of its runs (a
            :class:`~xzatoma.Runtime` gives its agents its own); ``None``: none.

    Raises:
        ConfigError: An invalid setting; or a ``max_total_cost`` in the quota while the
            model's price is not known.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        tools: Sequence[Tool[Any]] = (),
        system_prompt: str | None = None,
        max_turns: int = 50,
        name: str = "agent",
        timeout: float | None = None,
        hooks: Sequence[Instrument | Hook] | Hooks = (),
        quota: Quota | QuotaLimits | None = None,
        pricing: Pricing | Mapping[str, Price | Mapping[str, object]] | None = None,
        session_id: str | None = None,
        _hidden_tools: Sequence[Tool[Any]] = (),
    ) -> None:
        check_count("max_turns", max_turns)
        check_timeout(timeout)
        self.session_id = None if session_id is None else session_id_or_new(session_id)
        self.provider = provider
        self.tools: tuple[Tool[Any], ...] = tuple(tools)
        self._by_name = tools_by_name(self.tools)
        self._specs = tuple(t.spec for t in self.tools)
        # Callable but not offered: the subagent tools of an agent at max_depth, so that a
        # model calling them anyway gets the depth refusal rather than "unknown tool".
        for t in _hidden_tools:
            self._by_name.setdefault(t.name, t)
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.name = name
        self.timeout = timeout
        self.hooks = hooks if isinstance(hooks, Hooks) else Hooks(hooks)
        self.quota = one_quota(as_tracker(quota), (*self.tools, *_hidden_tools))
        self.pricing = as_pricing(pricing)
        # Looked up once, here, not in a run (the first lookup reads genai-prices' data);
        # kept with the provider it prices, so a provider replaced later is priced anew.
        self._priced: tuple[Provider, CallPrice | None] = (
            provider,
            self.pricing.price_for(provider),
        )
        if self.quota is not None and self.quota.limits.max_total_cost is not None:
            self.pricing.require(provider, "max_total_cost")
            for t in self.tools:  # a subagent tool's children may run on another model
                child_provider = getattr(getattr(t, "spawner", None), "child_provider", None)
                if callable(child_provider):
                    self.pricing.require(child_provider(provider), "max_total_cost")

    def __repr__(self) -> str:
        return (
            f"Agent(name={self.name!r}, model={self.provider.model!r}, tools={list(self._by_name)})"
        )

    @property
    def specs(self) -> tuple[ToolSpec, ...]:
        """What the model is told about the offered tools."""
        return self._specs

    def price_of(self, run: Run) -> CallPrice | None:
        """The price of ``run``'s calls: the one looked up at construction, unless the run
        has another provider or pricing (``None``: unknown)."""
        priced, price = self._priced
        if run.pricing is not self.pricing or run.provider is not priced:
            return run.pricing.price_for(run.provider)
        return price

    def callable_tool(self, name: str) -> Tool[Any] | None:
        """The tool a call names: an offered one, or a hidden subagent tool (which refuses)."""
        return self._by_name.get(name)

    def tool_names(self) -> str:
        """The names the model may call, for an ``Unknown tool`` message."""
        return ", ".join(self._by_name) or "none"

    async def run(self, prompt: str) -> RunResult:
        """Run the agent on ``prompt`` until it answers, runs out of turns, fails or times out.

        Returns a :class:`RunResult`; never raises for model, tool or quota trouble. The
        caller's own cancellation propagates, after every descendant has been cancelled; a
        caller that wants what the run had then (the command line on a signal) subscribes an
        :class:`~xzatoma.Instrument` and keeps the root :class:`~xzatoma.Run` it is handed.
        """
        now = loop_clock()
        deadline = math.inf if self.timeout is None else now() + self.timeout
        run = Run(
            label=self.name,
            name=self.name,
            hooks=self.hooks,
            quota=self.quota,
            provider=self.provider,
            tools=self.tools,
            deadline=deadline,
            now=now,
            pricing=self.pricing,
            session_id=self.session_id,
        )
        await self.drive(run, prompt)
        return run.result()

    async def drive(self, run: Run, prompt: str, followups: Sequence[str] = ()) -> None:
        """Run the loop as ``run`` (a root, or a child the spawner prepared); ``followups``
        are user turns sent after each answer, within the same ``max_turns``."""
        await RunLoop(self, run, followups).drive(prompt)
