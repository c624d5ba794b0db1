"""Model providers: the protocol and the OpenAI-compatible client."""

from __future__ import annotations

from ._base import Provider as Provider
from ._settings import ModelSettings as ModelSettings
from .openai import OpenAIProvider as OpenAIProvider

__all__ = ("ModelSettings", "OpenAIProvider", "Provider")
