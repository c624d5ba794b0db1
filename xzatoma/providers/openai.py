"""An OpenAI-compatible chat provider: ``POST /chat/completions`` over httpx, with retries.

One class serves OpenAI, Ollama, vLLM, llama.cpp server and LM Studio, because they all speak
the same wire format. Transient failures (429, 5xx, connection errors, timeouts) are retried
with capped exponential backoff and full jitter, honouring ``Retry-After``; everything else
becomes a :class:`~xzatoma.errors.ProviderError` that says what went wrong and never carries the
API key.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from types import TracebackType
from typing import Any, Self

import anyio
import httpx

from .._types import Completion, Message, ToolCall, ToolSpec, Usage
from ..errors import ConfigError, ProviderError

__all__ = ("OpenAIProvider", "clean_api_key", "validate_base_url")

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 8.0
_RETRY_AFTER_CAP = 60.0
_EXCERPT_CHARS = 200


class OpenAIProvider:
    """A chat model behind any OpenAI-compatible ``/chat/completions`` endpoint.

    The API key is kept private and only ever written into the ``Authorization`` header of
    each request, so it cannot leak through ``repr``, log records or error messages.

    Args:
        base_url: The API root, e.g. ``https://api.openai.com/v1`` or
            ``http://127.0.0.1:11434/v1`` (Ollama).
        model: The model to ask for.
        api_key: Sent as ``Authorization: Bearer ...``; local servers usually need none.
        timeout: Seconds allowed for each attempt (connect, write, read and pool alike).
        max_retries: Retries after the first attempt, so ``2`` means up to 3 attempts.
        client: An httpx client to use instead of an owned one; the caller closes it.

    Raises:
        ConfigError: ``base_url`` is not http(s), ``timeout`` is not positive or
            ``max_retries`` is negative.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60,
        max_retries: int = 2,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        validate_base_url(base_url)
        if api_key is not None:
            api_key = clean_api_key(api_key)
        if timeout <= 0:
            raise ConfigError(f"timeout must be greater than 0, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be at least 0, got {max_retries}")
        self._base_url = base_url
        self._model = model
        self._api_key = api_key
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._client = client
        self._owns_client = client is None
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        # Seams for tests: retry delays are recorded instead of slept, jitter made predictable.
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep
        self._random: Callable[[], float] = random.random

    @property
    def name(self) -> str:
        """Always ``openai``: the wire protocol, whichever server speaks it."""
        return "openai"

    @property
    def model(self) -> str:
        """The model asked for in every request."""
        return self._model

    @property
    def base_url(self) -> str:
        """The API root as given; requests go to ``{base_url}/chat/completions``."""
        return self._base_url

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self._base_url!r}, model={self._model!r})"

    def with_model(self, model: str) -> OpenAIProvider:
        """The same endpoint, key and connection pool under another model name.

        Used for ``SubagentConfig(model=...)``: children talk to a smaller model over the
        parent's connections. The pool stays owned (and closed) by this provider.
        """
        if self._client is None:
            self._client = httpx.AsyncClient()
        twin = OpenAIProvider(
            self._base_url,
            model,
            api_key=self._api_key,
            timeout=self._timeout,
            max_retries=self._max_retries,
            client=self._client,
        )
        twin._sleep, twin._random = self._sleep, self._random
        return twin

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the owned connection pool; a client passed in is left to its owner."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        """Send the conversation and tool specs; return the parsed reply.

        Raises:
            ProviderError: The endpoint failed after all retries, refused the request, or
                answered with a body that is not a usable chat completion.
        """
        payload: dict[str, Any] = {
            "model": self._model,
            "messages": [_message_to_openai(m) for m in messages],
        }
        if tools:
            payload["tools"] = [spec.to_openai() for spec in tools]
        response = await self._post(payload)
        return self._parse(response)

    async def _post(self, payload: dict[str, Any]) -> httpx.Response:
        if self._client is None:
            self._client = httpx.AsyncClient()
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempts = self._max_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._client.post(
                    self._url, json=payload, headers=headers, timeout=httpx.Timeout(self._timeout)
                )
            except httpx.TransportError as exc:
                if last or isinstance(exc, httpx.UnsupportedProtocol):
                    raise self._transport_error(exc, attempt + 1) from exc
                await self._pause(self._backoff(attempt), type(exc).__name__, attempt)
                continue
            if response.is_success:
                return response
            status = response.status_code
            if status not in _RETRY_STATUSES or last:
                tried = f" after {attempt + 1} attempts" if attempt else ""
                raise ProviderError(
                    f"model endpoint failed{tried}: HTTP {status} from {self._url}: "
                    f"{self._excerpt(response.text)}",
                    status_code=status,
                )
            retry_after = _retry_after(response.headers.get("retry-after"))
            delay = self._backoff(attempt) if retry_after is None else retry_after
            await self._pause(delay, f"HTTP {status}", attempt)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    async def _pause(self, delay: float, reason: str, attempt: int) -> None:
        total = self._max_retries + 1
        message = "retrying %s after %s (attempt %d of %d) in %.2f s"
        logger.warning(message, self._url, reason, attempt + 1, total, delay)
        await self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in ``[0, min(cap, base * 2**attempt))`` to spread out herds."""
        return self._random() * min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0**attempt)

    def _transport_error(self, exc: httpx.TransportError, attempts: int) -> ProviderError:
        tried = f" ({attempts} attempts)" if attempts > 1 else ""
        if isinstance(exc, httpx.TimeoutException):
            return ProviderError(
                f"request to {self._url} timed out after {self._timeout:g} s{tried} "
                f"({type(exc).__name__})"
            )
        if isinstance(exc, httpx.ConnectError):
            return ProviderError(
                f"could not connect to {self._url}{tried}: {exc or type(exc).__name__}; "
                "check base_url and that the server is running"
            )
        return ProviderError(
            f"request to {self._url} failed{tried}: {type(exc).__name__}: {self._redact(str(exc))}"
        )

    def _redact(self, text: str) -> str:
        # A server may echo the key back in an error body; it must not reach our messages.
        return text.replace(self._api_key, "[redacted]") if self._api_key else text

    def _excerpt(self, text: str) -> str:
        text = " ".join(self._redact(text).split())
        if len(text) > _EXCERPT_CHARS:
            return text[: _EXCERPT_CHARS - 3] + "..."
        return text or "(empty body)"

    def _malformed(self, response: httpx.Response, what: str) -> ProviderError:
        return ProviderError(
            f"malformed reply from {self._url}: {what}; body: {self._excerpt(response.text)}",
            status_code=response.status_code,
        )

    def _parse(self, response: httpx.Response) -> Completion:
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            raise self._malformed(response, "not JSON") from None
        if not isinstance(data, dict):
            raise self._malformed(response, "not a JSON object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise self._malformed(response, "no choices")
        choice = choices[0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise self._malformed(response, "no message in choices[0]")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise self._malformed(response, "content is not a string")
        raw_calls = message.get("tool_calls") or []
        if not isinstance(raw_calls, list):
            raise self._malformed(response, "bad tool_calls: not a list")
        calls = []
        for index, raw in enumerate(raw_calls):
            call = _tool_call(raw, index)
            if isinstance(call, str):
                raise self._malformed(response, f"bad tool_calls[{index}]: {call}")
            calls.append(call)
        finish = choice.get("finish_reason")
        model = data.get("model")
        return Completion(
            content=content,
            tool_calls=tuple(calls),
            usage=_usage(data.get("usage")),
            model=model if isinstance(model, str) else None,
            finish_reason=finish if isinstance(finish, str) else None,
        )


def validate_base_url(url: str, what: str = "base_url") -> None:
    """Refuse a base URL no request could be sent to, naming ``what`` (never a traceback later).

    Raises:
        ConfigError: The URL is not http(s), has no host, or its port is not in 1..65535;
            the message starts with ``what``.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{what} must start with http:// or https://")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ConfigError(f"{what} is not a valid URL: {exc}") from None
    if not parsed.host:
        raise ConfigError(f"{what} has no host name (e.g. http://127.0.0.1:8080/v1)")
    port = parsed.port
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{what} has port {port}, outside 1..65535")


def clean_api_key(key: str, source: str = "api_key") -> str:
    """The key without surrounding whitespace (a file written by ``echo``, CRLF, a secret mount).

    A control character left inside the key cannot be sent in a header; the error names
    ``source`` (e.g. ``environment variable OPENAI_API_KEY``), never the value.

    Raises:
        ConfigError: The key is empty after stripping or still holds a control character.
    """
    cleaned = key.strip()
    if not cleaned:
        raise ConfigError(f"{source} is empty (only whitespace)")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in cleaned):
        raise ConfigError(
            f"{source} holds a control character inside the key; write the key on one line "
            "with nothing but the key"
        )
    return cleaned


def _message_to_openai(message: Message) -> dict[str, Any]:
    """One message in the OpenAI shape; ``content`` may be null only beside tool calls."""
    content = message.content
    if content is None and not (message.role == "assistant" and message.tool_calls):
        content = ""
    out: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool_call(raw: object, index: int) -> ToolCall | str:
    """Parse one tool call, or say what is wrong with it."""
    if not isinstance(raw, dict):
        return "not an object"
    function = raw.get("function")
    if not isinstance(function, dict):
        return "no function object"
    name = function.get("name")
    if not isinstance(name, str) or not name:
        return "missing function name"
    arguments = function.get("arguments")
    if arguments is None:
        arguments = "{}"
    elif isinstance(arguments, dict | list):
        # Ollama and some others send the arguments as an object rather than a string.
        arguments = json.dumps(arguments)
    elif not isinstance(arguments, str):
        return "arguments is neither a string nor an object"
    call_id = raw.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = f"call_{index}"
    return ToolCall(call_id, name, arguments)


def _usage(raw: object) -> Usage:
    """The provider's token counts; anything missing or not an integer counts as zero."""
    if not isinstance(raw, dict):
        return Usage(requests=1)

    def count(key: str) -> int | None:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    prompt = count("prompt_tokens") or 0
    completion = count("completion_tokens") or 0
    total = count("total_tokens")
    return Usage(1, prompt, completion, prompt + completion if total is None else total)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), capped."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always UTC
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _RETRY_AFTER_CAP)
