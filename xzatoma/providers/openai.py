"""An OpenAI-compatible chat provider: ``POST /chat/completions`` with retries.

One class serves OpenAI, Ollama, vLLM, llama.cpp server and LM Studio, because they all speak
the same wire format. Transient failures (429, 5xx, connection errors, timeouts) are retried
with capped exponential backoff and full jitter, honouring ``Retry-After``. Each attempt is
bounded in time (connect, send and every byte of the reply) and in reply size. Everything
that goes wrong becomes a one-line :class:`~xzatoma.errors.ProviderError` that never carries
the API key (see ``docs/providers.md``). How the requests travel (aiohttp or httpx, behind
a gate of ``max_connections``) is ``_loop_transport``'s business.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Final, Self

import anyio
import httpx

from .._types import Completion, Message, ToolSpec
from .._version import package_version
from ..errors import ConfigError, ProviderError
from ._log_redaction import install_log_redaction, redacting_logs
from ._loop_transport import (
    LoopTransports,
    TransportChoice,
    check_transport_options,
    default_max_connections,
)
from ._openai_wire import MalformedReply, clean_text, encode_request, parse_reply
from ._reply_body import ACCEPT_ENCODING, read_capped, read_prefix
from ._retries import RETRY_STATUSES, Retryable, backoff, retry_after
from ._secrets import Redactor, clean_api_key
from ._settings import ModelSettings, ToolChoice
from ._tool_replies import ToolReplies
from ._transport import Reply, Transport, TransportFailure, connect_hints, environment_proxy
from ._urls import (
    chat_completions_url,
    server_of,
    shown_url,
    url_secrets,
    validate_base_url,
)

__all__ = ("OpenAIProvider", "clean_api_key", "validate_base_url")

logger = logging.getLogger(__name__)

MAX_RETRIES = 100
"""The most retries one provider may make: more is a typo, not a policy."""
USER_AGENT: Final = f"xzatoma/{package_version()}"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_RESPONSE_BYTES = 8_388_608
MIN_RESPONSE_BYTES = 1024
"""The smallest reply-size cap: below it no chat completion fits."""
_EXCERPT_CHARS = 200
_SAID_CHARS = 300
"""How much of an exception's text about the endpoint a message quotes."""
_ERROR_BODY_BYTES = 4096
"""How much of an error (or malformed) body is read and scanned for the excerpt."""
_TIMEOUT_HINT = (
    "the limit is per attempt: raise it with OpenAIProvider(timeout=...), "
    "provider.timeout_seconds in the config file or --request-timeout"
)


class OpenAIProvider:
    """A chat model behind any OpenAI-compatible ``/chat/completions`` endpoint.

    The API key is kept private and only ever written into the ``Authorization`` header of
    each request; every message built from what the endpoint or the HTTP library said is
    redacted, so it cannot leak through ``repr``, log records or error messages.

    Args:
        base_url: The API root, e.g. ``https://api.openai.com/v1`` or
            ``http://127.0.0.1:11434/v1`` (Ollama).
        model: The model to ask for.
        api_key: Sent as ``Authorization: Bearer ...``; local servers usually need none.
        api_key_env: The environment variable that holds the key: read here when
            ``api_key`` is not given. A provider sent to another process (a Ray worker)
            carries only this name and reads the key from that process's environment, so
            the key itself is never serialised; a provider with a key given as a value
            cannot be sent (``docs/distributed.md``).
        timeout: Seconds one attempt may take as a whole: connect, send and every byte of
            the reply.
        max_retries: Retries after the first attempt, so ``2`` means up to 3 attempts.
        max_response_bytes: The most a reply body may hold once decompressed (8 MiB).
        client: An httpx client to use instead of owned ones; the caller closes it and
            keeps it to one event loop.
        max_connections: The most requests in flight at once, and the connections kept
            open for them (all kept alive and reused); more requests wait their turn in
            xzatoma, never inside the HTTP client; a call's ``timeout`` starts once it has a
            connection. Default: 1000, or half the process's open-file limit if lower.
            With a ``client`` of yours, set it to that client's pool size.
        transport: ``auto`` (aiohttp on asyncio, httpx on trio: ``docs/providers.md``),
            ``aiohttp`` or ``httpx``. A ``client`` given is always used as it is.
        temperature, top_p, seed, max_tokens, tool_choice, parallel_tool_calls: Model
            settings sent with every request, only those set (see
            :class:`~xzatoma.ModelSettings`); subagents inherit them.
        settings: The same as one :class:`~xzatoma.ModelSettings`; the keywords above win.
        text_tool_calls: Read a reply whose whole text is tool calls written out (bare JSON,
            a fenced JSON block, ``<tool_call>`` tags) naming offered tools as those tool
            calls (``docs/providers.md``). Many local models answer that way.
        provider_name: What :attr:`name` (and so ``gen_ai.provider.name`` in telemetry)
            says: the kind of server behind the URL, e.g. ``ollama``, ``vllm``,
            ``llamacpp``; ``openai`` by default. The config file's ``provider.type`` sets it.

    Raises:
        ConfigError: ``base_url`` is unusable, the key holds a control or non-ASCII
            character, ``timeout`` is not a finite positive number of seconds,
            ``max_retries`` is not in 0..100, ``max_response_bytes`` is below 1024,
            ``max_connections`` is below 1, ``transport`` is none of the three, or a
            model setting is out of its range.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        client: httpx.AsyncClient | None = None,
        max_connections: int | None = None,
        transport: TransportChoice = "auto",
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        tool_choice: ToolChoice | None = None,
        parallel_tool_calls: bool | None = None,
        settings: ModelSettings | None = None,
        text_tool_calls: bool = True,
        provider_name: str = "openai",
    ) -> None:
        validate_base_url(base_url)
        given = ModelSettings(
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            max_tokens=max_tokens,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
        )
        if type(text_tool_calls) is not bool:
            raise ConfigError(f"text_tool_calls must be True or False, got {text_tool_calls!r}")
        if settings is not None and not isinstance(settings, ModelSettings):
            raise ConfigError(f"settings must be a ModelSettings, got {type(settings).__name__}")
        if not isinstance(provider_name, str) or not provider_name.strip():
            raise ConfigError(f"provider_name must be a non-empty string, got {provider_name!r}")
        if api_key is None and api_key_env is not None:
            api_key = _key_from_environment(api_key_env)
        if api_key is not None:
            api_key = clean_api_key(api_key)
        if not math.isfinite(timeout):  # infinity would remove the bound; NaN is no number
            raise ConfigError(
                f"timeout must be a finite number of seconds greater than 0, got {timeout}"
            )
        if not timeout > 0:
            raise ConfigError(f"timeout must be greater than 0, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be at least 0, got {max_retries}")
        if max_retries > MAX_RETRIES:
            raise ConfigError(f"max_retries cannot exceed {MAX_RETRIES}, got {max_retries}")
        if max_response_bytes < MIN_RESPONSE_BYTES:
            raise ConfigError(
                f"max_response_bytes must be at least {MIN_RESPONSE_BYTES}, "
                f"got {max_response_bytes}"
            )
        check_transport_options(max_connections, transport)
        self._base_url = base_url
        self._model = model
        self._provider_name = provider_name
        self._server = server_of(base_url)
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._own_client = client is None
        self._transport_choice: TransportChoice = transport
        self._timeout = float(timeout)
        self._max_retries = int(max_retries)
        self._max_response_bytes = int(max_response_bytes)
        self._url = chat_completions_url(base_url)
        # Read once: the transport, the redactor and the messages name the same proxy.
        proxy = environment_proxy(self._url)
        self._transports = LoopTransports(
            client,
            choice=transport,
            size=max_connections or default_max_connections(),
            url=self._url,
            proxy=proxy,
            timeout=self._timeout,
        )
        self._owns_clients = True
        self._use_settings((settings or ModelSettings()).merged(given))
        self._shown_url = shown_url(self._url)
        # Shared with the twins, as the pool is: one server, one warning per model.
        self._tool_replies = ToolReplies(logger, self._shown_url, recover=text_tool_calls)
        # The proxy's credentials too: a proxy that refuses them may echo them back.
        self._redact = Redactor(
            (api_key, *url_secrets(base_url), *(url_secrets(proxy) if proxy else ()))
        )
        self._through, self._unreachable = connect_hints(proxy)
        self._headers = {
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,  # the same whichever HTTP library sends it
        }
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        install_log_redaction()
        # Seams for tests: retry delays are recorded instead of slept, jitter made predictable.
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep
        self._random: Callable[[], float] = random.random

    @property
    def name(self) -> str:
        """The kind of server (``provider_name``): ``openai`` unless told otherwise."""
        return self._provider_name

    @property
    def server(self) -> tuple[str, int]:
        """The endpoint's host and port (``server.address`` and ``server.port`` on spans)."""
        return self._server

    @property
    def model(self) -> str:
        """The model asked for in every request."""
        return self._model

    @property
    def base_url(self) -> str:
        """The API root as given; requests go to ``{base_url}/chat/completions``."""
        return self._base_url

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={shown_url(self._base_url)!r}, model={self._model!r})"

    @property
    def max_connections(self) -> int:
        """The most requests in flight at once, and the connections kept open for them."""
        return self._transports.size

    @property
    def settings(self) -> ModelSettings:
        """The model settings sent with every request (unset ones are not sent)."""
        return self._settings

    @property
    def text_tool_calls(self) -> bool:
        """Whether tool calls written as text are read as tool calls."""
        return self._tool_replies.recover

    def with_settings(self, settings: ModelSettings) -> OpenAIProvider:
        """The same endpoint, key, model and connection pool with ``settings`` on top of
        these (a field ``settings`` leaves unset keeps this provider's value).

        Used for subagents: ``SubagentConfig(model_settings=...)`` overrides single fields
        of the parent's settings. The pool stays owned (and closed) by this provider.
        """
        merged = self._settings.merged(settings)
        if merged == self._settings:
            return self
        twin = copy.copy(self)
        twin._owns_clients = False
        twin._use_settings(merged)
        return twin

    def _use_settings(self, settings: ModelSettings) -> None:
        self._settings = settings
        # Worked out once: every request sends one of the two.
        self._fields_with_tools = settings.request_fields(with_tools=True)
        self._fields_without_tools = settings.request_fields(with_tools=False)

    def with_model(self, model: str) -> OpenAIProvider:
        """The same endpoint, key and connection pool under another model name.

        Used for ``SubagentConfig(model=...)``: children talk to a smaller model over the
        parent's connections, in whichever event loop. The pool stays owned (and closed) by
        this provider.
        """
        # A copy, not a new construction: every spawn of a child under another model comes
        # here, and the checks, the redactor and the headers are the parent's already.
        twin = copy.copy(self)
        twin._model, twin._owns_clients = model, False
        return twin

    def __copy__(self) -> OpenAIProvider:
        """A shallow copy sharing the pool (the twins of :meth:`with_model`); without it,
        ``copy.copy`` would go through :meth:`__reduce__` and make a new provider."""
        twin = object.__new__(OpenAIProvider)
        twin.__dict__.update(self.__dict__)
        return twin

    def __reduce__(self) -> tuple[object, ...]:
        """What another process (a Ray worker) rebuilds this provider from: its settings and
        the name of the key's variable, never the key; the copy makes its own connections."""
        if self._api_key and not self._api_key_env:
            raise ConfigError(
                "this OpenAIProvider's API key was given as a value, and xzatoma never "
                "serialises a key: to send the provider to another process (a Ray worker), "
                "make it with api_key_env='NAME', the environment variable that holds the key "
                "there too"
            )
        if not self._own_client:
            raise ConfigError(
                "an OpenAIProvider made with client= cannot be sent to another process (its "
                "httpx client stays here); make it without client="
            )
        options = {
            "api_key_env": self._api_key_env if self._api_key else None,
            "timeout": self._timeout,
            "max_retries": self._max_retries,
            "max_response_bytes": self._max_response_bytes,
            "max_connections": self._transports.size,
            "transport": self._transport_choice,
            "settings": self._settings,
            "text_tool_calls": self._tool_replies.recover,
            "provider_name": self._provider_name,
        }
        return (_rebuilt, (self._base_url, self._model, options))

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
        if self._owns_clients:
            await self._transports.aclose()

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        """Send the conversation and tool specs; return the parsed reply.

        Raises:
            ProviderError: The endpoint failed after all retries, refused the request, or
                answered with a body that is not a usable chat completion; nothing else.
        """
        fields = self._fields_with_tools if tools else self._fields_without_tools
        try:
            body = encode_request(self._model, messages, tools, fields)
        except (TypeError, ValueError) as exc:  # a tool schema that is not JSON
            raise self._error(f"could not encode the request to {self._shown_url}", exc) from None
        try:
            transport = await self._transports.get()
        except ProviderError:
            raise
        except Exception as exc:  # TLS set-up, an HTTP library that will not start
            raise self._error(f"could not set up requests to {self._shown_url}", exc) from None
        reply = await self._send(transport, body)
        try:
            completion = parse_reply(reply, messages)
        except MalformedReply as exc:
            prefix = bytes(reply[:_ERROR_BODY_BYTES])
            excerpt = self._excerpt(prefix, cut=len(reply) > _ERROR_BODY_BYTES)
            raise self._fail(
                f"malformed reply from {self._shown_url}: {exc}; body: {excerpt}", 200
            ) from None
        if tools:
            completion = self._tool_replies.check(completion, tools, self._model, self._settings)
        return completion

    async def _send(self, transport: Transport, body: bytes) -> bytearray:
        attempts = self._max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt(transport, body)
            except Retryable as failure:
                if attempt == attempts:
                    tried = f" ({attempt} attempts)" if attempt > 1 else ""
                    raise self._fail(failure.head + tried + failure.tail, failure.status) from None
                delay = self._backoff(attempt - 1) if failure.delay is None else failure.delay
                await self._pause(delay, failure.reason, attempt)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    async def _attempt(self, transport: Transport, body: bytes) -> bytearray:
        """One attempt, bounded as a whole by ``timeout`` (the transport keeps the time,
        from when a connection is free): the reply body, or why not."""
        with redacting_logs(self._redact):
            try:
                async with transport.post(self._url, body, self._headers) as reply:
                    return await self._read(reply)
            except (ProviderError, Retryable):
                raise
            except TransportFailure as failure:
                raise self._transport_failure(failure) from None
            except Exception as exc:  # not the HTTP library's own: a bug somewhere below
                raise self._error(f"request to {self._shown_url} failed", exc) from None

    async def _read(self, response: Reply) -> bytearray:
        status = response.status
        if 200 <= status < 300:
            limit = self._max_response_bytes
            return await read_capped(response, limit, self._shown_url, self._redact)
        prefix, cut = await read_prefix(response, _ERROR_BODY_BYTES, self._shown_url, self._redact)
        head, tail = "model endpoint failed", f": HTTP {status} from {self._shown_url}: "
        tail += self._excerpt(prefix, cut=cut)
        if status not in RETRY_STATUSES:
            raise self._fail(head + tail, status)
        delay = retry_after(response.header("retry-after"))
        raise Retryable(f"HTTP {status}", head, tail, status=status, delay=delay)

    def _transport_failure(self, failure: TransportFailure) -> Retryable | ProviderError:
        name, said = failure.name, self._redact.quote(failure.said, _SAID_CHARS)
        if failure.kind == "timeout":
            head = f"request to {self._shown_url} timed out after {self._timeout:g} s"
            named = f" ({name})" if name else ""  # a name: httpx's own, of one phase
            return Retryable(name or "timeout", head, f"{named}; {_TIMEOUT_HINT}", delay=None)
        if failure.kind == "connect":
            tail = f": {said or name}; check {self._unreachable}"
            head = f"could not connect to {self._shown_url}{self._through}"
            return Retryable(name, head, tail, delay=None)
        if failure.kind == "unbuildable":
            return self._fail(f"could not build the request to {self._shown_url}: {name}: {said}")
        head, tail = f"request to {self._shown_url} failed", f": {name}: {said}"
        if failure.kind == "refused":
            return self._fail(head + tail)  # our own request is at fault: again is the same
        return Retryable(name, head, tail, delay=None)

    def _error(self, what: str, exc: Exception) -> ProviderError:
        return self._fail(f"{what}: {type(exc).__name__}: {self._said(exc)}")

    def _said(self, exc: Exception) -> str:
        """What an exception says, made safe: only text from outside is (our URL stays whole,
        even when a key like ``ollama`` is also the host's name)."""
        return self._redact.quote(str(exc), _SAID_CHARS)

    @staticmethod
    def _fail(message: str, status_code: int | None = None) -> ProviderError:
        """The error to raise, on one line and always encodable.

        Every piece of outside text in ``message`` went through ``self._redact.quote``
        first (``_excerpt``, ``_said``, ``read_capped``): redacted, then cut.
        """
        return ProviderError(clean_text(" ".join(message.split())), status_code=status_code)

    def _excerpt(self, body: bytes, *, cut: bool) -> str:
        """The start of a body, made safe; ``cut``: ``body`` is the start of a longer one."""
        text = body.decode("utf-8", "replace")
        return self._redact.quote(text, _EXCERPT_CHARS, cut=cut) or "(empty body)"

    async def _pause(self, delay: float, reason: str, attempt: int) -> None:
        total = self._max_retries + 1
        message = "retrying %s after %s (attempt %d of %d) in %.2f s"
        logger.warning(message, self._shown_url, reason, attempt, total, delay)
        await self._sleep(delay)

    def _backoff(self, attempt: int) -> float:  # full jitter
        return backoff(attempt, self._random())


def _rebuilt(base_url: str, model: str, options: dict[str, object]) -> OpenAIProvider:
    return OpenAIProvider(base_url, model, **options)  # type: ignore[arg-type]


def _key_from_environment(name: str) -> str:
    key = os.environ.get(name)
    if not key:
        raise ConfigError(
            f"environment variable {name} (named by api_key_env) is not set in this process"
        )
    return key
