"""What the environment supplies when neither the file nor the command line does, as OpenAI's
own clients read it: ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` for ``provider.type:
openai``, and ``XZATOMA_CONFIG``, the configuration file when ``--config`` is not given.

The API key's value is only ever read here to be passed on; messages name the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .errors import ConfigError
from .providers._urls import shown_url, validate_base_url

if TYPE_CHECKING:
    from ._config_models import ProviderSettings

__all__ = (
    "CONFIG_VARIABLE",
    "OPENAI_BASE_URL_VARIABLE",
    "OPENAI_KEY_VARIABLE",
    "OPENAI_URL",
    "endpoint_of",
    "key_variable_of",
)

CONFIG_VARIABLE = "XZATOMA_CONFIG"
"""The configuration file's path when ``--config`` is not given."""
OPENAI_BASE_URL_VARIABLE = "OPENAI_BASE_URL"
"""The API root of ``provider.type: openai`` when ``provider.base_url`` is not set."""
OPENAI_KEY_VARIABLE = "OPENAI_API_KEY"
"""The key's variable for ``provider.type: openai`` when ``provider.api_key_env`` is not set."""
OPENAI_URL = "https://api.openai.com/v1"
"""OpenAI's own API root: the ``openai`` type's URL when the environment names none."""


def endpoint_of(section: ProviderSettings, env: Mapping[str, str]) -> str | None:
    """The base URL ``section`` calls: its ``base_url``; for the ``openai`` type without
    one, ``OPENAI_BASE_URL`` when set (not blank), else the type's default URL."""
    if section.base_url is None and section.type == "openai":
        url = env.get(OPENAI_BASE_URL_VARIABLE, "").strip()
        if url:
            validate_base_url(url, what=f"environment variable {OPENAI_BASE_URL_VARIABLE}")
            return url
    return section.endpoint


def key_variable_of(
    section: ProviderSettings, endpoint: str, env: Mapping[str, str], where: str
) -> str | None:
    """The variable the API key is read from: ``api_key_env``; for the ``openai`` type
    without one, ``OPENAI_API_KEY`` when it is set. OpenAI's own API refuses every request
    without a key, so there an unset ``OPENAI_API_KEY`` is an error before anything is sent;
    another server named by ``OPENAI_BASE_URL`` or ``base_url`` may need none."""
    if section.api_key_env is not None or section.type != "openai":
        return section.api_key_env
    if env.get(OPENAI_KEY_VARIABLE, "").strip():
        return OPENAI_KEY_VARIABLE
    if endpoint.rstrip("/") == OPENAI_URL:
        raise ConfigError(
            f"{where}.type openai calls {shown_url(endpoint)}, which needs an API key: set "
            f"{OPENAI_KEY_VARIABLE} (read by default), or name another variable with "
            f"--api-key-env NAME ({where}.api_key_env)"
        )
    return None
