"""Usage from outside: checked before it is charged, estimated where the provider gave none.

A provider's token counts are the endpoint's word (or a custom provider's), so the agent loop
passes every completion through :func:`checked_usage` before its usage is charged to the quota,
summed into a result or recorded: a count that could refund the tree's tokens or switch
``max_total_tokens`` off (negative, a float, NaN, a bool, absurdly large) is refused, and a
provider that reported nothing is estimated when a token limit depends on it. The estimate
rule, :func:`estimate_tokens`, is the one the OpenAI provider uses for an endpoint's missing
counts, so both paths agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from ._types import Completion, Message, ToolCall, Usage

__all__ = (
    "MAX_TOKENS_PER_CALL",
    "UsageRefused",
    "checked_usage",
    "describe_count",
    "estimate_tokens",
    "estimated_usage",
    "reply_texts",
    "request_texts",
)

MAX_TOKENS_PER_CALL = 1_000_000_000
"""The most tokens one model call may count: no model reads or writes a billion tokens in one
call. The OpenAI provider estimates a reported count above it; the agent loop refuses one."""


class UsageRefused(ValueError):
    """A provider's usage that must not be charged (negative, not an int, or absurd)."""


def checked_usage(
    completion: Completion, messages: Sequence[Message], *, estimate_missing: bool
) -> Completion:
    """The completion, with usage the quota can be charged; raises :class:`UsageRefused`.

    Every token count must be a non-negative ``int`` (not a ``bool``) of at most
    :data:`MAX_TOKENS_PER_CALL`. ``requests`` is always 1: the agent counts its own calls.
    A ``total_tokens`` below ``prompt_tokens + completion_tokens`` is raised to that sum and
    marked ``estimated``, so an understated total cannot slip past ``max_total_tokens``. A
    provider that reported no usage at all (``Usage()``, the default of ``Completion``) is
    estimated from ``messages`` and the reply when ``estimate_missing`` (the tree has a token
    limit), and counts 0 tokens otherwise. The sound case is a few type and range checks.
    """
    usage = completion.usage
    if type(usage) is Usage and usage.requests == 1:
        p, c, t = usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
        if (
            type(p) is int
            and type(c) is int
            and type(t) is int
            and p >= 0
            and c >= 0
            and p + c <= t <= MAX_TOKENS_PER_CALL
        ):
            return completion
    return replace(completion, usage=_repaired(completion, messages, estimate_missing))


def _repaired(completion: Completion, messages: Sequence[Message], estimate: bool) -> Usage:
    usage = completion.usage
    if not isinstance(usage, Usage):
        raise UsageRefused(f"usage is a {type(usage).__name__}, not an xzatoma Usage")
    if usage == _NOTHING_REPORTED:
        return estimated_usage(messages, completion) if estimate else Usage(1)
    counts = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    bad = [
        f"{name}={describe_count(value)}"
        for name, value in counts.items()
        if isinstance(value, bool) or not isinstance(value, int) or value < 0
    ]
    if bad:
        raise UsageRefused(", ".join(bad) + " (token counts must be non-negative integers)")
    prompt, output, total = (int(value) for value in counts.values())
    total = max(total, prompt + output)
    if total > MAX_TOKENS_PER_CALL:
        raise UsageRefused(
            f"{describe_count(total)} tokens for one model call (more than "
            f"{MAX_TOKENS_PER_CALL} cannot be real)"
        )
    estimated = usage.estimated is True or total != counts["total_tokens"]
    return Usage(1, prompt, output, total, estimated)


_NOTHING_REPORTED = Usage()


def estimated_usage(messages: Sequence[Message], completion: Completion) -> Usage:
    """xzatoma's estimate of one call: the request's texts in, the reply's texts out."""
    prompt = estimate_tokens(request_texts(messages))
    reply = estimate_tokens(reply_texts(completion.content, completion.tool_calls))
    return Usage(1, prompt, reply, prompt + reply, estimated=True)


def request_texts(messages: Sequence[Message]) -> Iterable[str | None]:
    """The texts of a request that a model reads as tokens: contents and tool-call arguments."""
    for message in messages:
        yield message.content
        for call in message.tool_calls:
            yield call.arguments


def reply_texts(content: str | None, calls: Sequence[ToolCall]) -> Iterable[str | None]:
    """The texts of a reply that a model wrote as tokens: its content and tool-call arguments."""
    yield content
    for call in calls:
        yield call.arguments


def estimate_tokens(texts: Iterable[str | None]) -> int:
    """About four UTF-8 bytes a token: ``ceil(bytes / 4)`` over the given texts.

    Rough, but never zero for text that is there and never negative; the OpenAI tokenizer
    averages about four bytes a token for English.
    """
    size = sum(len(text.encode("utf-8", "surrogatepass")) for text in texts if text)
    return -(-size // 4)


def describe_count(value: object) -> str:
    """A count for an error message, bounded whatever it is (a 4000-digit int, an object)."""
    if isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        if abs(value) < 10**20:
            return str(int(value))
        return f"about {'-' if value < 0 else ''}2**{abs(value).bit_length() - 1}"
    return f"a {type(value).__name__}"
