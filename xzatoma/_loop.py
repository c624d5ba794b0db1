"""The agent loop as a driver of one :class:`~xzatoma.Run`: call the model, run the tools it
asks for, repeat until it answers.

Every way a run can end is recorded on the run (complete, incomplete, failed) except a
cancellation from outside, which propagates after the run has been marked. The end hooks run
in ``finally``, so subscribers see exactly one end for every start.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from ._cancellation import cancel_requests, is_stray_cancellation
from ._result import ErrorType, RunStatus
from ._run import ModelCall, Run, new_id
from ._tools import ToolContext, ToolResult, run_tool
from ._types import CUT_SHORT, Completion, Message, ToolCall
from ._usage import UsageRefused, checked_usage
from .errors import ConfigError, ProviderError, QuotaExceeded, QuotaUnavailable
from .providers._settings import settings_of

if TYPE_CHECKING:
    from ._agent import Agent
    from ._pricing import CallPrice

__all__ = ("RunLoop",)

logger = logging.getLogger("xzatoma.agent")

_Outcome = tuple[RunStatus, ErrorType | None, str | None]

EMPTY_ANSWER_PROMPT = "Your last reply was empty. Reply now, with what you have found so far."
"""The user turn sent once after an empty final answer, while turns remain; a second empty
answer ends the run ``incomplete``."""


class _ModelFailed(Exception):
    """The provider raised; the run ends ``failed`` with this message."""


class RunLoop:
    """Drives one run of one agent; ``followups`` are user turns sent after each answer
    (the summary prompt), within the same ``max_turns``."""

    __slots__ = ("agent", "followups", "price", "run")

    def __init__(self, agent: Agent, run: Run, followups: Sequence[str] = ()) -> None:
        self.agent = agent
        self.run = run
        self.followups = list(followups)
        self.price: CallPrice | None = None

    async def drive(self, prompt: str) -> None:
        """Run to the end; the run's deadline (absolute, anyio's clock) ends it ``failed``."""
        run = self.run
        run.hooks.run_started(run)
        try:
            try:
                if run.deadline == math.inf:
                    run.finish(*await self._turns(prompt))
                else:
                    with anyio.CancelScope(deadline=run.deadline) as scope:
                        outcome = await self._turns(prompt)
                    if scope.cancelled_caught:
                        run.deadline_passed()
                    else:
                        run.finish(*outcome)
            except Exception as exc:  # a bug in a provider adapter or tool plumbing: report it
                logger.exception("agent %r failed unexpectedly", self.agent.name)
                run.finish("failed", "execution_failed", f"{type(exc).__name__}: {exc}")
        except BaseException as exc:
            run.interrupted(exc)
            raise
        finally:
            run.hooks.run_ended(run)

    async def _turns(self, prompt: str) -> _Outcome:
        run, agent = self.run, self.agent
        price = self.price = agent.price_of(run)
        quota = run.quota
        if price is None and quota is not None and quota.limits.max_total_cost is not None:
            try:  # the runtime refuses this before any run; a tree built by hand may not
                run.pricing.require(run.provider, "the tree's max_total_cost")
            except ConfigError as exc:
                return "failed", "initialization_failed", str(exc)
        messages = run.messages
        if agent.system_prompt is not None:
            messages.append(Message.system(agent.system_prompt))
        messages.append(Message.user(prompt))
        asked_again = False  # after an empty answer, once
        answered = False  # a complete answer was given, and a followup asked
        while True:
            if run.turns >= agent.max_turns:
                return "incomplete", None, f"ran out of turns (max_turns={agent.max_turns})"
            # A cancelled run must make no further model call, even if nothing has yielded yet.
            await anyio.lowlevel.checkpoint_if_cancelled()
            # Before every model call but the first: the spawn's reservation has just checked
            # the same (one quota round trip less per subagent, on Redis a network one).
            if run.quota is not None and run.depth > 0 and run.turns:
                try:
                    await run.quota.acheck_running()
                except QuotaExceeded as exc:
                    return "failed", "quota_exceeded", str(exc)
                except QuotaUnavailable as exc:
                    return "failed", "execution_failed", str(exc)
            try:
                made = await self._call_model()
            except _ModelFailed as exc:
                return "failed", "execution_failed", str(exc)
            completion = made.completion
            assert completion is not None
            run.turns += 1
            run.usage += completion.usage
            cost = made.cost
            if cost is None:  # add_costs, inline: once per model call
                run.cost = None
            elif cost and run.cost is not None:
                run.cost += cost
            if run.quota is not None:
                try:
                    await run.quota.acharge(completion.usage.total_tokens, cost)
                except QuotaUnavailable as exc:  # the call was made and cannot be counted
                    if run.depth > 0:
                        return "failed", "execution_failed", str(exc)
                    # The root is never stopped by the quota: it answers with what it has.
                    logger.warning("the root's model call could not be charged: %s", exc)
            messages.append(completion.message)
            if completion.finish_reason in CUT_SHORT:
                # A followup (the summary) cut short keeps the whole answer given before it.
                return _cut_short(completion, run, keep_output=answered)
            calls, content = completion.tool_calls, completion.content
            if not calls and (not content or content.isspace()):
                # Never a silent "complete" with nothing to show: ask once more, keeping any
                # answer an earlier turn gave (the task's, before an empty summary).
                if asked_again or run.turns >= agent.max_turns:
                    return "incomplete", None, "the model's answer was empty"
                asked_again = True
                messages.append(Message.user(EMPTY_ANSWER_PROMPT))
                continue
            if content:
                run.output = content
            if not calls:
                if not self.followups:
                    return "complete", None, None
                if run.turns >= agent.max_turns:
                    return "incomplete", None, "no turn left for the summary"
                messages.append(Message.user(self.followups.pop(0)))
                answered = True
                continue
            if run.turns >= agent.max_turns:
                return "incomplete", None, f"ran out of turns (max_turns={agent.max_turns})"
            results = await self._run_tools(calls)
            for call, result in zip(calls, results, strict=True):
                messages.append(Message.tool(call, result.content))

    async def _call_model(self) -> ModelCall:
        """One model call; returns it ended, with its (checked) completion and cost."""
        run = self.run
        provider = run.provider
        call = ModelCall(run)
        run.hooks.model_call_started(run, call)
        before = cancel_requests()  # per call: a tool may have left one uncancelled
        try:
            reply = await provider.complete(run.messages, self.agent.specs)
            # Checked before it is charged, summed or recorded: usage is the endpoint's word.
            quota = run.quota
            # A call with no usage is estimated when a limit counts it (tokens or dollars).
            limited = quota is not None and quota.counts_usage
            checked = checked_usage(reply, run.messages, estimate_missing=limited)
            if checked.content is not None and not isinstance(checked.content, str):
                raise TypeError(f"a reply whose content is {type(checked.content).__name__}")
            call.completion = checked
            if self.price is not None:
                call.cost = self.price.cost(checked.usage)
        except UsageRefused as exc:
            call.error_type = "execution_failed"
            raise _ModelFailed(
                f"provider {provider.name!r} returned invalid usage: {exc}"
            ) from None
        except ProviderError as exc:
            call.error_type = "execution_failed"
            call.status_code = exc.status_code
            raise _ModelFailed(f"provider {provider.name!r} failed: {exc}") from exc
        except Exception as exc:
            call.error_type = "execution_failed"
            logger.exception("provider %r raised an unexpected exception", provider.name)
            raise _ModelFailed(
                f"provider {provider.name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        except (asyncio.CancelledError, BaseExceptionGroup) as exc:
            if not await is_stray_cancellation(exc, before):
                raise
            call.error_type = "execution_failed"
            raise _ModelFailed(
                f"provider {provider.name!r} raised {type(exc).__name__} although nothing "
                "cancelled this run"
            ) from None
        finally:
            call.ended = run.now()
            if call.completion is None and call.error_type is None:  # cancelled from outside
                call.error_type = run.deadline_error if call.ended >= run.deadline else "cancelled"
            run.hooks.model_call_ended(run, call)
        return call

    async def _run_tools(self, calls: tuple[ToolCall, ...]) -> list[ToolResult]:
        """Run one reply's tool calls concurrently; results in the model's order.

        Each call's context (and so its id, which orders the children it spawns) is made
        here, in the model's order, before any call starts. A subagent a call spawns
        attaches its result to the run when it ends, so children that ended are kept even
        when this turn is cancelled or times out.
        """
        contexts = [self._context(call) for call in calls]
        self.run.tool_calls += len(calls)
        if len(calls) == 1:
            # The run's own task: a tool before may have left a cancel request behind.
            return [await self._invoke(contexts[0], cancel_requests())]
        results: list[ToolResult] = [ToolResult("")] * len(calls)

        async def invoke_into(index: int) -> None:
            # Each call runs in a task of its own, whose cancellation count starts at 0.
            results[index] = await self._invoke(contexts[index], 0)

        async with anyio.create_task_group() as tg:
            for index in range(len(calls)):
                tg.start_soon(invoke_into, index)
                if index % 100 == 99:
                    # Let calls that finish at once do so while the rest are spawned, so a
                    # reply of 10,000 calls does not hold 10,000 pending tasks at once.
                    await anyio.lowlevel.checkpoint()
        return results

    def _context(self, call: ToolCall) -> ToolContext:
        run = self.run
        return ToolContext(run=run, agent=self.agent, call=call, id=new_id(), started=run.now())

    async def _invoke(self, ctx: ToolContext, cancels: int) -> ToolResult:
        run, agent, call = self.run, self.agent, ctx.call
        run.hooks.tool_call_started(run, ctx)
        result: ToolResult | None = None
        try:
            found = agent.callable_tool(call.name)
            if found is None:
                result = ToolResult.error(
                    f"Unknown tool '{call.name}'. Available tools: {agent.tool_names()}."
                )
            else:
                result = await run_tool(found, ctx, cancels)
            return result
        finally:
            run.hooks.tool_call_ended(run, ctx, result)


def _cut_short(completion: Completion, run: Run, *, keep_output: bool) -> _Outcome:
    """How the run ends when the reply was stopped before it was whole.

    ``length``: cut at the token limit, so the text is not a complete answer and any tool
    call in it may be cut too; nothing in it is run. The cut text is the output, unless it
    answers a followup (the summary) and ``keep_output``: then the whole answer given before
    it stays. ``content_filter``: the provider refused to finish the reply.
    """
    if completion.finish_reason == "content_filter":
        why = "the provider's content filter stopped the model's reply (finish_reason "
        return "failed", "execution_failed", why + "'content_filter')"
    if completion.content and not keep_output:
        run.output = completion.content
    limit = settings_of(run.provider).max_tokens
    at = f" (max_tokens={limit})" if limit is not None else ""
    why = f"the model's reply was cut at its length limit{at}, finish_reason 'length'"
    return "incomplete", None, why + "; the answer is not complete"
