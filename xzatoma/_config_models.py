"""The configuration file's schema: one pydantic model per section, and what the file builds.

Each section is a frozen, strict model that refuses unknown keys; :class:`XzatomaConfig` is
the whole file. It checks what pydantic's types cannot say (ranges, finite numbers, URLs),
and builds the core's objects from the file: the provider clients, the
:class:`~xzatoma.SubagentConfig` (whose messages are the section 6 ones, spelled once there)
and the quota (:class:`~xzatoma.QuotaLimits`, kept in Redis with ``distributed.redis_url``).
:mod:`xzatoma.config` is where these are imported from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import pydantic

from ._config_distributed import DistributedSettings
from ._config_env import OPENAI_URL, endpoint_of, key_variable_of
from ._config_errors import describe
from ._config_mcp import MCPServerSettings, ToolsSettings
from ._limits import QuotaLimits
from ._pricing import Pricing, dollars
from ._redis_quota import RedisQuota
from ._scripted_model import SCRIPTED, SCRIPTED_MODEL, scripted_model
from ._subagent_models import DEFAULT_SUMMARY_PROMPT, SubagentConfig
from .errors import ConfigError
from .providers import OpenAIProvider
from .providers._base import Provider
from .providers._loop_transport import TransportChoice
from .providers._settings import SETTING_NAMES, ModelSettings
from .providers._urls import shown_url
from .providers.openai import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    MAX_RETRIES,
    MIN_RESPONSE_BYTES,
    clean_api_key,
    validate_base_url,
)

__all__ = (
    "DEFAULT_BASE_URLS",
    "PROVIDER_DEFAULTS",
    "AgentSettings",
    "DistributedSettings",
    "MCPServerSettings",
    "PriceSettings",
    "PrometheusSettings",
    "ProviderSettings",
    "ProviderType",
    "SubagentSettings",
    "TelemetrySettings",
    "ToolsSettings",
    "XzatomaConfig",
)

ProviderType = Literal["openai", "ollama", "vllm", "llamacpp", "lmstudio", "scripted"]
"""Every type but ``scripted`` is the same OpenAI-compatible client; the type only picks a
default base URL. ``scripted`` is the built-in offline model, which calls no endpoint."""

DEFAULT_BASE_URLS: Mapping[str, str] = {
    "openai": OPENAI_URL,
    "ollama": "http://127.0.0.1:11434/v1",
    "vllm": "http://127.0.0.1:8000/v1",
    "llamacpp": "http://127.0.0.1:8080/v1",
    "lmstudio": "http://127.0.0.1:1234/v1",
}

PROVIDER_DEFAULTS: Mapping[str, float | int] = {
    "timeout_seconds": DEFAULT_TIMEOUT,
    "max_retries": DEFAULT_MAX_RETRIES,
    "max_response_bytes": DEFAULT_MAX_RESPONSE_BYTES,
}
"""What ``provider.timeout_seconds``, ``max_retries`` and ``max_response_bytes`` are when
neither the file nor the command line sets them."""

# What each key accepts, and the words of its message, in the order checked (NaN is not
# greater than 0 either; an infinity is refused by every float key, see _finite).
_PROVIDER_LIMITS: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("timeout_seconds", lambda v: v > 0, "must be greater than 0"),
    ("max_retries", lambda v: v >= 0, "must be at least 0"),
    ("max_retries", lambda v: v <= MAX_RETRIES, f"cannot exceed {MAX_RETRIES}"),
    (
        "max_response_bytes",
        lambda v: v >= MIN_RESPONSE_BYTES,
        f"must be at least {MIN_RESPONSE_BYTES} bytes",
    ),
    ("max_connections", lambda v: v >= 1, "must be at least 1"),
)


class _Section(pydantic.BaseModel):
    # strict: YAML already gives typed values, so "3" for an integer is a mistake to report.
    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


class ProviderSettings(_Section):
    """``provider``: which OpenAI-compatible endpoint to call."""

    type: ProviderType | None = None
    """``openai``, ``ollama``, ``vllm``, ``llamacpp`` or ``lmstudio``: one client, a default URL
    (``openai``: ``OPENAI_BASE_URL`` first); ``scripted``: the built-in offline model."""
    base_url: str | None = None
    """The API root, e.g. ``http://127.0.0.1:11434/v1``; defaults to the type's URL."""
    model: str | None = None
    """The model name the endpoint serves."""
    api_key_env: str | None = None
    """The environment variable holding the API key (none: send no key; for the ``openai``
    type, ``OPENAI_API_KEY`` when it is set)."""
    timeout_seconds: float | None = None
    """Seconds one attempt of a request may take, every byte of the reply included (60)."""
    max_retries: int | None = None
    """Retries after a failed attempt (429, 5xx, connection errors, timeouts) (2)."""
    max_response_bytes: int | None = None
    """The largest reply body accepted, after decompression (8388608, 8 MiB)."""
    max_connections: int | None = None
    """The most model calls in flight at once, each on a connection kept alive for reuse;
    more wait their turn (unset: 1000, or half the open-file limit if that is lower)."""
    transport: TransportChoice | None = None
    """``auto`` (aiohttp on asyncio, httpx on trio; the default), ``aiohttp`` or ``httpx``."""
    # The model settings: types here, ranges in ModelSettings (spelled once, see check()).
    temperature: float | None = None
    """Sampling temperature, 0..2 (not sent when unset: the endpoint's default)."""
    top_p: float | None = None
    """Nucleus sampling: the probability mass to sample from, 0..1."""
    seed: int | None = None
    """A sampling seed, where the endpoint supports one."""
    max_tokens: int | None = None
    """The most tokens one reply may have; a reply cut there ends the run incomplete."""
    tool_choice: str | None = None
    """``auto``, ``none`` or ``required`` (``required``: the agent can never answer)."""
    parallel_tool_calls: bool | None = None
    """Whether one reply may call several tools."""
    text_tool_calls: bool | None = None
    """Read tool calls a model wrote as text as real ones (true when unset)."""

    @property
    def endpoint(self) -> str | None:
        """The base URL to call: ``base_url``, else the type's default, else None (also for
        ``scripted``, which calls none). Without the environment: ``OPENAI_BASE_URL`` is read
        when the provider is built."""
        if self.base_url is not None:
            return self.base_url
        return DEFAULT_BASE_URLS.get(self.type) if self.type is not None else None

    def model_settings(self, where: str = "provider") -> ModelSettings:
        """The section's model settings, checked by :class:`~xzatoma.ModelSettings` with
        ``where`` (the section's dotted key) in front of its message."""
        try:
            return ModelSettings(**{name: getattr(self, name) for name in SETTING_NAMES})
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None

    def under(self, parent: ProviderSettings, model: str | None = None) -> ProviderSettings:
        """This section (``agent.subagent.provider``) with each unset key taken from
        ``parent``; ``model`` (``agent.subagent.model``) comes before the parent's model.

        Without an endpoint of its own (no ``type``, no ``base_url``) it is the parent's
        endpoint with these changes, API key included. With one, the endpoint and its key
        stay its own (the parent's ``api_key_env`` is never sent to another server; a
        section of type ``openai`` reads ``OPENAI_API_KEY`` by default, as OpenAI's own
        client does, whatever its ``base_url``); the limits, the model settings and
        ``text_tool_calls`` are still inherited.
        """
        own = {"type", "base_url", "api_key_env"} if self.endpoint is not None else set()
        inherited = {
            name: getattr(parent, name)
            for name in type(self).model_fields
            if getattr(self, name) is None and name not in own
        }
        inherited["model"] = self.model or model or parent.model
        return self.model_copy(update=inherited)


def _provider_shorthand(value: object) -> object:
    # `provider: ollama` under agent.subagent is short for `provider: {type: ollama}`.
    return {"type": value} if isinstance(value, str) else value


class SubagentSettings(_Section):
    """``agent.subagent``: how subagents are spawned, and the quota they share."""

    max_depth: int = 3
    """Deepest level a subagent may run at (the root is 0); 1..10."""
    default_max_turns: int = 10
    """Model calls a subagent may make when its task does not say; 1..100."""
    output_max_size: int = 1_048_576
    """Bytes of a child's output the parent receives; at least 1024."""
    max_concurrent: int = 5
    """Tasks of one parallel batch in flight at once."""
    summary_prompt: str | None = DEFAULT_SUMMARY_PROMPT
    """Asked after each task; ``null`` turns the summary turn off."""
    timeout_seconds: float | None = None
    """Seconds each subagent may run."""
    max_executions: int | None = None
    """Subagent executions the whole tree may start."""
    max_total_tokens: int | None = None
    """Tokens the whole tree may consume."""
    max_total_time: float | None = None
    """Seconds after which no subagent may run."""
    max_total_cost: float | None = None
    """US dollars the whole tree may spend (every model needs a known price: ``pricing``)."""
    provider: ProviderSettings | None = None
    """What subagents change of ``provider`` (a mapping like it, or just a type name): each
    unset key is the root's, so ``{temperature: 0.7}`` is the root's endpoint at 0.7."""
    model: str | None = None
    """Another model for subagents, on the same endpoint unless ``provider`` is set."""

    _shorthand = pydantic.field_validator("provider", mode="before")(_provider_shorthand)


class AgentSettings(_Section):
    """``agent``: the root agent, and its subagents."""

    max_turns: int = 50
    """Model calls the root agent may make."""
    timeout_seconds: float | None = None
    """Seconds the whole run may take."""
    subagent: SubagentSettings = SubagentSettings()
    """How subagents are spawned."""


class PrometheusSettings(_Section):
    """``telemetry.prometheus``: where ``/metrics`` is served."""

    host: str = "127.0.0.1"
    """The interface to bind; loopback unless you choose otherwise."""
    port: int = 9464
    """The TCP port (0 picks a free one)."""


class TelemetrySettings(_Section):
    """``telemetry``: OpenTelemetry metrics and the Prometheus endpoint."""

    enabled: bool = False
    """Serve ``/metrics`` while a command runs."""
    prometheus: PrometheusSettings = PrometheusSettings()
    """Where to serve it."""


class PriceSettings(_Section):
    """``pricing.{MODEL}``: a model's price, before genai-prices' bundled data."""

    input_per_mtok: float
    """US dollars per million prompt (input) tokens."""
    output_per_mtok: float
    """US dollars per million completion (output) tokens."""


class XzatomaConfig(_Section):
    """The whole configuration file; every section is optional."""

    provider: ProviderSettings = ProviderSettings()
    """The model endpoint."""
    agent: AgentSettings = AgentSettings()
    """The root agent and its subagents."""
    telemetry: TelemetrySettings = TelemetrySettings()
    """Metrics."""
    distributed: DistributedSettings = DistributedSettings()
    """Where batches run (Ray) and where the quota is kept (Redis)."""
    tools: ToolsSettings = ToolsSettings()
    """Tools the whole tree shares: MCP servers (``tools.mcp_servers``)."""
    pricing: dict[str, PriceSettings] = {}
    """Prices by model name (the name the provider asks for), in US dollars per million
    tokens: they give a local model a price (0 when free) and override the bundled ones."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> XzatomaConfig:
        """Validate a parsed file; raises :class:`ConfigError` with one readable line."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                "the configuration must be a mapping with the sections provider, agent, "
                f"telemetry; got {type(data).__name__}"
            )
        try:
            config = cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ConfigError(describe(exc, cls)) from None
        config.check()
        return config

    def check(self) -> None:
        """Check the limits pydantic's types cannot express (the section 6 messages)."""
        # Before _finite: an infinite temperature gets ModelSettings' message with its range.
        self.provider.model_settings("provider")
        if self.agent.subagent.provider is not None:
            self.agent.subagent.provider.model_settings("agent.subagent.provider")
        _finite(self, "")
        self.subagent_config()
        self.quota_limits()
        self.build_pricing()
        p, a = "agent.subagent", self.agent
        if a.max_turns < 1:
            raise ConfigError("agent.max_turns must be greater than 0")
        if a.timeout_seconds is not None and not a.timeout_seconds > 0:
            raise ConfigError("agent.timeout_seconds must be greater than 0")
        if not 0 <= self.telemetry.prometheus.port <= 65535:
            raise ConfigError("telemetry.prometheus.port must be between 0 and 65535")
        for name, section in (("provider", self.provider), (f"{p}.provider", a.subagent.provider)):
            if section is None:
                continue
            if section.base_url is not None:
                validate_base_url(section.base_url, what=f"{name}.base_url")
            if section.api_key_env is not None and not section.api_key_env.strip():
                raise ConfigError(
                    f"{name}.api_key_env must name an environment variable; it is empty"
                )
            for key, accepts, words in _PROVIDER_LIMITS:
                value = getattr(section, key)
                if value is not None and not accepts(value):
                    raise ConfigError(f"{name}.{key} {words}")
        self.distributed.check()
        self.tools.servers()

    def subagent_config(self, provider: Provider | None = None) -> SubagentConfig:
        """The core's :class:`SubagentConfig` (it raises the section 6 messages)."""
        s = self.agent.subagent
        return SubagentConfig(
            max_depth=s.max_depth,
            default_max_turns=s.default_max_turns,
            output_max_size=s.output_max_size,
            max_concurrent=s.max_concurrent,
            summary_prompt=s.summary_prompt,
            timeout=s.timeout_seconds,
            provider=provider,
            model=s.model,
        )

    def quota_limits(self) -> QuotaLimits:
        """The shared quota, with messages naming the configuration keys."""
        s, p = self.agent.subagent, "agent.subagent"
        for name in ("max_executions", "max_total_tokens"):
            value = getattr(s, name)
            if value is not None and value < 0:
                raise ConfigError(f"{p}.{name} must be at least 0")
        if s.max_total_time is not None and not s.max_total_time > 0:
            raise ConfigError(f"{p}.max_total_time must be greater than 0")
        cost = s.max_total_cost
        return QuotaLimits(
            s.max_executions,
            s.max_total_tokens,
            s.max_total_time,
            None if cost is None else dollars(cost, f"{p}.max_total_cost"),
        )

    def build_quota(self) -> QuotaLimits | RedisQuota:
        """The tree's quota: :meth:`quota_limits`, kept in Redis under ``distributed.tree``
        when ``distributed.redis_url`` is set (ConfigError without the ``redis`` extra)."""
        return self.distributed.quota(self.quota_limits())

    def build_pricing(self) -> Pricing:
        """The prices of the ``pricing`` section, before genai-prices' bundled data (a
        price that is not a non-negative number: a ConfigError naming its key); the
        ``scripted`` model costs 0 unless the section says otherwise."""
        prices = {model: dict(price) for model, price in self.pricing.items()}
        if self.provider.type == SCRIPTED:
            free = {"input_per_mtok": 0, "output_per_mtok": 0}
            prices.setdefault(self.provider.model or SCRIPTED_MODEL, free)
        return Pricing(prices)

    def build_model(
        self, env: Mapping[str, str] | None = None, *, subagents: bool = False
    ) -> Provider | None:
        """:meth:`build_provider`, or the built-in offline model where the section's type is
        ``scripted`` (its endpoint keys are then not used)."""
        found = self._section(subagents)
        if found is not None and found[0].type == SCRIPTED:
            return scripted_model(found[0].model, found[0].model_settings(found[1]))
        return self.build_provider(env, subagents=subagents)

    def _section(self, subagents: bool) -> tuple[ProviderSettings, str, str] | None:
        """The section a provider is built from, its dotted key, and the key that names
        its API key variable; None when subagents use the parent's provider."""
        s = self.agent.subagent
        if not subagents:
            return self.provider, "provider", "provider"
        if s.provider is None and s.model is None:
            return None
        child = s.provider or ProviderSettings()
        section = child.under(self.provider, s.model)
        if s.provider is None:
            return section, "provider", "provider"
        where = "agent.subagent.provider"
        return section, where, where if child.api_key_env is not None else "provider"

    def build_provider(
        self, env: Mapping[str, str] | None = None, *, subagents: bool = False
    ) -> OpenAIProvider | None:
        """The client for ``provider``; None when no endpoint is given.

        With ``subagents``: the client for subagents when ``agent.subagent.provider`` or
        ``agent.subagent.model`` asks for one, else None (children use the parent's). Every
        key ``agent.subagent.provider`` leaves unset is ``provider``'s (see
        :meth:`ProviderSettings.under`), then :data:`PROVIDER_DEFAULTS` (an unset
        ``max_connections`` or ``transport`` is the provider's own default). Raises
        :class:`ConfigError` when there is an endpoint but no model, or when ``api_key_env``
        names a variable that is not set, is blank, or holds a control character (the
        message names the variable, never its value). The ``openai`` type reads
        ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` from ``env`` when the section leaves
        ``base_url`` and ``api_key_env`` unset (:mod:`xzatoma._config_env`); the
        ``scripted`` type has no endpoint here (see :meth:`build_model`).
        """
        env = os.environ if env is None else env
        found = self._section(subagents)
        if found is None:
            return None
        section, where, key_where = found
        if section.type == SCRIPTED:
            raise ConfigError(
                f"{where}.type scripted is the built-in offline model, not an endpoint: "
                "build it with build_model(), which builds every type"
            )
        endpoint = endpoint_of(section, env)
        if endpoint is None:
            return None
        if not section.model:
            raise ConfigError(f"no model given for {shown_url(endpoint)}: set {where}.model")
        key = None
        key_env = key_variable_of(section, endpoint, env, where)
        if key_env:
            name = key_env
            key = env.get(name)
            if not key:
                raise ConfigError(
                    f"environment variable {name} (named by {key_where}.api_key_env) is not set"
                )
            key = clean_api_key(key, source=f"environment variable {name}")
        limit = {k: default if getattr(section, k) is None else getattr(section, k)
                 for k, default in PROVIDER_DEFAULTS.items()}  # fmt: skip
        return OpenAIProvider(
            endpoint,
            section.model,
            api_key=key,
            api_key_env=key_env,  # where another process (a Ray worker) reads it
            timeout=limit["timeout_seconds"],
            max_retries=int(limit["max_retries"]),
            max_response_bytes=int(limit["max_response_bytes"]),
            max_connections=section.max_connections,
            transport=section.transport or "auto",
            settings=section.model_settings(where),
            text_tool_calls=section.text_tool_calls is not False,
            provider_name=section.type or "openai",  # gen_ai.provider.name in telemetry
        )


def _finite(section: pydantic.BaseModel, prefix: str) -> None:
    """Refuse an infinity in any number of seconds (``.inf``, ``1e309``): it would wait
    forever, and the core refuses it later with a message that lacks the key."""
    for name, value in section:
        if isinstance(value, pydantic.BaseModel):
            _finite(value, f"{prefix}{name}.")
        elif isinstance(value, float) and math.isinf(value):
            raise ConfigError(f"{prefix}{name} must be a finite number")
