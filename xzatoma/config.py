"""The YAML configuration file: load it, validate it, and put the command line on top.

Keys are those of ``docs/configuration.md``, one pydantic model per section (defined in
``_config_models``, imported from here); unknown keys are refused by their dotted name. The
API key is never stored here: ``provider.api_key_env`` names the environment variable to
read it from. Precedence is command line > file > defaults (see :func:`apply_overrides`); the
command line's file is ``--config``, else the one ``XZATOMA_CONFIG`` names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ._config_env import CONFIG_VARIABLE
from ._config_models import DEFAULT_BASE_URLS as DEFAULT_BASE_URLS
from ._config_models import PROVIDER_DEFAULTS as PROVIDER_DEFAULTS
from ._config_models import AgentSettings as AgentSettings
from ._config_models import DistributedSettings as DistributedSettings
from ._config_models import MCPServerSettings as MCPServerSettings
from ._config_models import PriceSettings as PriceSettings
from ._config_models import PrometheusSettings as PrometheusSettings
from ._config_models import ProviderSettings as ProviderSettings
from ._config_models import ProviderType as ProviderType
from ._config_models import SubagentSettings as SubagentSettings
from ._config_models import TelemetrySettings as TelemetrySettings
from ._config_models import ToolsSettings as ToolsSettings
from ._config_models import XzatomaConfig as XzatomaConfig
from ._files import MAX_CONFIG_BYTES, load_yaml, read_text
from ._tasks_file import load_tasks as load_tasks
from .errors import ConfigError
from .providers._settings import SETTING_NAMES
from .providers.openai import MAX_RETRIES as MAX_RETRIES

__all__ = (
    "DEFAULT_BASE_URLS",
    "MAX_RETRIES",
    "OVERRIDE_KEYS",
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
    "apply_overrides",
    "load_config",
    "load_tasks",
)

# The models are documented (and pickled) as this module's, where they were always defined.
for _model in (
    AgentSettings,
    DistributedSettings,
    MCPServerSettings,
    PriceSettings,
    PrometheusSettings,
    ProviderSettings,
    SubagentSettings,
    TelemetrySettings,
    ToolsSettings,
    XzatomaConfig,
    load_tasks,
):
    _model.__module__ = __name__
del _model


def load_config(path: str | os.PathLike[str]) -> XzatomaConfig:
    """Read and validate a YAML configuration file.

    Raises :class:`ConfigError` (``"{path}: {problem}"``) for a missing or unreadable file,
    invalid YAML, an unknown key or an invalid value. An empty file is all defaults.
    """
    path = Path(path)
    data = load_yaml(path, read_text(path, "configuration", MAX_CONFIG_BYTES)).data
    try:
        return XzatomaConfig.from_dict({} if data is None else data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_given_config(
    given: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> XzatomaConfig:
    """The command line's configuration: the file ``--config`` gives (``given``), else the
    one ``XZATOMA_CONFIG`` names (blank: none), else the defaults. An error in a file the
    variable named says so, the missing file included, so the variable is not forgotten."""
    if given is not None:
        return load_config(given)
    named = (os.environ if env is None else env).get(CONFIG_VARIABLE, "")
    if not named.strip():
        return XzatomaConfig()
    try:
        return load_config(named)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} (the file {CONFIG_VARIABLE} names; unset it or pass --config FILE)"
        ) from None


_OVERRIDES: Mapping[str, tuple[str, ...]] = {
    "provider_type": ("provider", "type"),
    "base_url": ("provider", "base_url"),
    "model": ("provider", "model"),
    "api_key_env": ("provider", "api_key_env"),
    "max_turns": ("agent", "max_turns"),
    "timeout": ("agent", "timeout_seconds"),
    "max_depth": ("agent", "subagent", "max_depth"),
    "subagent_max_turns": ("agent", "subagent", "default_max_turns"),
    "max_concurrent": ("agent", "subagent", "max_concurrent"),
    "max_executions": ("agent", "subagent", "max_executions"),
    "max_total_tokens": ("agent", "subagent", "max_total_tokens"),
    "max_total_time": ("agent", "subagent", "max_total_time"),
    "max_total_cost": ("agent", "subagent", "max_total_cost"),
    "metrics_host": ("telemetry", "prometheus", "host"),
    "metrics_port": ("telemetry", "prometheus", "port"),
    "request_timeout": ("provider", "timeout_seconds"),
    "max_retries": ("provider", "max_retries"),
    "max_response_bytes": ("provider", "max_response_bytes"),
    "max_connections": ("provider", "max_connections"),
    "http_transport": ("provider", "transport"),
    **{name: ("provider", name) for name in (*SETTING_NAMES, "text_tool_calls")},
    "ray": ("distributed", "ray"),
    "ray_address": ("distributed", "ray_address"),
    "workers": ("distributed", "workers"),
    "per_worker": ("distributed", "per_worker"),
    "file_sd": ("distributed", "file_sd"),
    "redis_url": ("distributed", "redis_url"),
    "quota_tree": ("distributed", "tree"),
}

_CHILDREN_TOO = frozenset(
    {*PROVIDER_DEFAULTS, "max_connections", "transport", *SETTING_NAMES, "text_tool_calls"}
)
"""The ``provider`` keys a flag sets in ``agent.subagent.provider`` too, when the file has
one: what the flag means to say holds for the whole tree, and the file is below it."""


OVERRIDE_KEYS: Mapping[str, str] = {name: ".".join(path) for name, path in _OVERRIDES.items()}
"""The names :func:`apply_overrides` accepts, each with the dotted key it sets."""


def apply_overrides(config: XzatomaConfig, **overrides: object) -> XzatomaConfig:
    """A copy of ``config`` with the command line's values on top (``None`` = not given).

    Keys: ``provider_type``, ``base_url``, ``model``, ``api_key_env``, ``max_turns``,
    ``timeout``, ``max_depth``, ``subagent_max_turns``, ``max_concurrent``,
    ``max_executions``, ``max_total_tokens``, ``max_total_time``, ``max_total_cost``,
    ``metrics_host``,
    ``metrics_port`` (a port also turns ``telemetry.enabled`` on), ``request_timeout``,
    ``max_retries``, ``max_response_bytes``, ``max_connections``, ``http_transport`` (sets
    ``provider.transport``), ``temperature``, ``top_p``, ``seed``, ``max_tokens``,
    ``tool_choice``, ``parallel_tool_calls``, ``text_tool_calls`` (these last twelve set
    ``provider`` and, when the file has one, ``agent.subagent.provider``: the command line
    beats the file everywhere), and ``ray``, ``ray_address``, ``workers``, ``per_worker``,
    ``file_sd``, ``redis_url``, ``quota_tree`` (the keys of ``distributed``; ``quota_tree`` sets
    ``distributed.tree``). The result is validated again, so an override gets the same
    messages as the file.
    """
    data = config.model_dump()
    for name, value in overrides.items():
        if name not in _OVERRIDES:
            raise TypeError(f"apply_overrides() got an unexpected override {name!r}")
        if value is None:
            continue
        *parents, leaf = _OVERRIDES[name]
        section = data
        for part in parents:
            section = section[part]
        section[leaf] = value
        if name == "metrics_port":
            data["telemetry"]["enabled"] = True
        children = data["agent"]["subagent"]["provider"]
        if parents == ["provider"] and leaf in _CHILDREN_TOO and children is not None:
            children[leaf] = value
    return XzatomaConfig.from_dict(data)
