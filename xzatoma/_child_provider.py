"""Which provider a subagent talks to: the parent's, or ``SubagentConfig.provider``, under
``SubagentConfig.model``, with the model settings it inherits.

Settings flow down field by field: the parent's, then those of a child provider of its own,
then ``SubagentConfig.model_settings``. A provider that cannot take settings
(no ``with_settings``) is used as it is, unless ``model_settings`` asks for some.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError
from .providers._base import Provider
from .providers._settings import settings_of

if TYPE_CHECKING:
    from ._subagent_models import SubagentConfig

__all__ = ("provider_for_children",)


def provider_for_children(parent: Provider, config: SubagentConfig) -> Provider:
    """The provider children of a run on ``parent`` use.

    Raises:
        ConfigError: ``config.model`` needs a provider with ``with_model``, or
            ``config.model_settings`` one with ``with_settings``, and it has none.
    """
    provider = config.provider or parent
    model = config.model
    if model is not None and model != provider.model:
        with_model = getattr(provider, "with_model", None)
        if with_model is None:
            raise ConfigError(
                f"cannot switch provider {provider.name!r} to model {model!r}: it has no "
                "with_model(); set SubagentConfig.provider instead"
            )
        provider = with_model(model)
    return _with_settings(parent, provider, config)


def _with_settings(parent: Provider, provider: Provider, config: SubagentConfig) -> Provider:
    wanted = settings_of(parent)
    if provider is not parent:
        wanted = wanted.merged(settings_of(provider))
    wanted = wanted.merged(config.model_settings)
    if wanted == settings_of(provider):
        return provider
    with_settings = getattr(provider, "with_settings", None)
    if with_settings is None:
        if not config.model_settings:
            return provider  # a provider of its own, with no settings to inherit into
        raise ConfigError(
            f"cannot give provider {provider.name!r} SubagentConfig.model_settings: it "
            "has no with_settings()"
        )
    changed: Provider = with_settings(wanted)
    return changed
