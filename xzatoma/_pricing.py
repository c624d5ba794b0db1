"""Prices of model calls, and the cost of one call from its usage.

Where a model's price comes from, in order: the prices the caller gave (``Runtime(pricing=)``,
the config file's ``pricing`` section), matched by the exact model name; then the data bundled
with the ``genai-prices`` package, matched by the provider's API URL when it has one (so a
model on a local server is unknown until it is given a price) and by the model name alone
when it has none. The bundled data is read as installed: nothing is ever fetched. A model
found nowhere has no price, and its calls' cost is ``None`` ("unknown"), never 0.

A price is looked up once per model and URL; a call's cost is then two multiplications.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from ._types import Usage
from .errors import ConfigError

if TYPE_CHECKING:
    from .providers._base import Provider

__all__ = ("BUNDLED", "CallPrice", "Price", "Pricing", "as_pricing", "dollars")

logger = logging.getLogger("xzatoma.pricing")

_MILLION = Decimal(1_000_000)
_CACHE_SIZE = 1024


def dollars(value: object, what: str) -> Decimal:
    """``value`` as a non-negative, finite number of US dollars; a :class:`ConfigError` naming
    ``what`` otherwise. Takes an int, a float (read as written: ``0.1`` is ``Decimal('0.1')``),
    a ``Decimal`` or a numeric string."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a number of US dollars, got {value!r}")
    try:
        if isinstance(value, float):
            amount = Decimal(repr(value)) if math.isfinite(value) else Decimal("NaN")
        elif isinstance(value, int | Decimal | str):
            amount = Decimal(value.strip() if isinstance(value, str) else value)
        else:
            raise ConfigError(
                f"{what} must be a number of US dollars, got a {type(value).__name__}"
            )
    except InvalidOperation:
        raise ConfigError(f"{what} must be a number of US dollars, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{what} must be a non-negative, finite number of dollars, got {value!r}")
    return amount


class CallPrice(Protocol):
    """What prices one model call: its cost from its usage (``None``: it could not be priced)."""

    def cost(self, usage: Usage) -> Decimal | None: ...


class Price:
    """A model's price in US dollars per million tokens, in and out.

    ``Price(0, 0)`` is a free model (a local one): its calls cost a known ``$0``. Any number
    form is taken (``0.15``, ``"0.15"``, ``Decimal("0.15")``) and kept as a ``Decimal``.

    Raises:
        ConfigError: A price that is negative, not finite, or not a number.
    """

    __slots__ = ("input_per_mtok", "output_per_mtok")

    input_per_mtok: Decimal
    """Dollars per million prompt (input) tokens."""
    output_per_mtok: Decimal
    """Dollars per million completion (output) tokens."""

    def __init__(
        self,
        input_per_mtok: Decimal | float | int | str,
        output_per_mtok: Decimal | float | int | str,
    ) -> None:
        self.input_per_mtok = dollars(input_per_mtok, "input_per_mtok")
        self.output_per_mtok = dollars(output_per_mtok, "output_per_mtok")

    def __repr__(self) -> str:
        return f"Price({self.input_per_mtok}, {self.output_per_mtok})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Price):
            return NotImplemented
        return (self.input_per_mtok, self.output_per_mtok) == (
            other.input_per_mtok,
            other.output_per_mtok,
        )

    def __hash__(self) -> int:
        return hash((self.input_per_mtok, self.output_per_mtok))

    def cost(self, usage: Usage) -> Decimal:
        """The dollars of ``usage`` at this price."""
        return (
            self.input_per_mtok * usage.prompt_tokens
            + self.output_per_mtok * usage.completion_tokens
        ) / _MILLION


class _BundledPrice:
    """A price of genai-prices that is not a flat rate (tiers by prompt size, a fee per
    request): every call is priced by genai-prices itself, at about 70 us a call."""

    __slots__ = ("_price", "_usage")

    def __init__(self, price: Any) -> None:
        from genai_prices import Usage as GenaiUsage

        self._price, self._usage = price, GenaiUsage

    def cost(self, usage: Usage) -> Decimal | None:
        counts = self._usage(
            input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens
        )
        try:
            return Decimal(self._price.calc_price(counts)["total_price"])
        except Exception:  # genai-prices' own trouble: this call's cost is unknown, the run goes on
            logger.exception("genai-prices could not price a call; its cost is unknown")
            return None


class Pricing:
    """Where the prices of a tree's model calls come from.

    Args:
        prices: Prices by exact model name (the name the provider asks for, ``provider.model``),
            as :class:`Price` or mappings of its two keys. They come before the bundled data,
            so they give a local model its price (``Price(0, 0)`` when it is free) and
            override a bundled one.
        bundled: Look models up in genai-prices' bundled data when ``prices`` has no entry.

    Raises:
        ConfigError: A price that is not a non-negative number.
    """

    __slots__ = ("_bundled", "_cache", "prices")

    def __init__(
        self,
        prices: Mapping[str, Price | Mapping[str, object]] | None = None,
        *,
        bundled: bool = True,
    ) -> None:
        self.prices: Mapping[str, Price] = MappingProxyType(
            {model: _as_price(model, price) for model, price in (prices or {}).items()}
        )
        """The prices given, read-only (a lookup is kept once made: give them all here)."""
        self._bundled = bundled
        self._cache: dict[tuple[str, str | None], CallPrice | None] = {}

    def __repr__(self) -> str:
        return f"Pricing(prices={dict(self.prices)!r}, bundled={self._bundled})"

    def price_of(self, model: str, base_url: str | None = None) -> CallPrice | None:
        """The price of ``model`` (served at ``base_url``, when known); ``None``: unknown."""
        key = (model, base_url)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found: CallPrice | None = self.prices.get(model)
        if found is None and self._bundled:
            found = _bundled_price(model, base_url)
        if len(self._cache) >= _CACHE_SIZE:  # a model name per call cannot grow it forever
            self._cache.clear()
        self._cache[key] = found
        return found

    def price_for(self, provider: Provider) -> CallPrice | None:
        """The price of the model ``provider`` asks for, at its API URL when it has one."""
        base_url = getattr(provider, "base_url", None)
        return self.price_of(provider.model, base_url if isinstance(base_url, str) else None)

    def require(self, provider: Provider, why: str) -> None:
        """Raise :class:`ConfigError` unless ``provider``'s model has a price (``why``: what
        needs it), saying how to give one."""
        if self.price_for(provider) is not None:
            return
        model = provider.model
        raise ConfigError(
            f"{why} needs the price of model {model!r}, and none is known (it is not in "
            f"genai-prices' data for {_where(provider)}): give it in the config file as "
            f"pricing.{model}.input_per_mtok and pricing.{model}.output_per_mtok (US dollars "
            f"per million tokens; 0 for a free local model), or in Python as "
            f"Runtime(..., pricing={{{model!r}: Price(input_per_mtok=..., output_per_mtok=...)}})"
        )


def _where(provider: Provider) -> str:
    base_url = getattr(provider, "base_url", None)
    if isinstance(base_url, str):
        from .providers._urls import shown_url

        return f"the endpoint {shown_url(base_url)}"
    return f"provider {provider.name!r}"


def _as_price(model: object, price: Price | Mapping[str, object]) -> Price:
    if not isinstance(model, str) or not model:
        raise ConfigError(f"a price is given for model {model!r}; model names are strings")
    if isinstance(price, Price):
        return price
    if not isinstance(price, Mapping):
        raise ConfigError(
            f"pricing.{model} must have input_per_mtok and output_per_mtok, got "
            f"a {type(price).__name__}"
        )
    unknown = sorted(set(price) - {"input_per_mtok", "output_per_mtok"})
    missing = [k for k in ("input_per_mtok", "output_per_mtok") if k not in price]
    if unknown or missing:
        said = [f"unknown key {', '.join(map(repr, unknown))}"] if unknown else []
        said += [f"missing {', '.join(missing)}"] if missing else []
        raise ConfigError(f"pricing.{model}: {'; '.join(said)}")
    return Price(
        dollars(price["input_per_mtok"], f"pricing.{model}.input_per_mtok"),
        dollars(price["output_per_mtok"], f"pricing.{model}.output_per_mtok"),
    )


def _bundled_price(model: str, base_url: str | None) -> CallPrice | None:
    """genai-prices' price of ``model``: by the API URL when there is one, else by name."""
    try:
        from genai_prices import data_snapshot

        snapshot = data_snapshot.get_snapshot()
        provider, info = snapshot.find_provider_model(model, None, None, base_url)
        price = info.get_prices(datetime.now(tz=UTC))
    except LookupError:
        return None
    except Exception:  # a broken install of the price data must not break a run
        logger.exception("genai-prices could not price model %r; its cost is unknown", model)
        return None
    del provider
    rates = {k: v for k, v in vars(price).items() if v is not None}
    prompt, completion = rates.get("input_mtok"), rates.get("output_mtok")
    if prompt is None or completion is None:
        return None  # tokens one way are not priced (embeddings, audio): a chat's cost is unknown
    flat = all(v is None or isinstance(v, Decimal) for v in (prompt, completion))
    if flat and "requests_kcount" not in rates:
        return Price(prompt, completion)
    return _BundledPrice(price)


BUNDLED = Pricing()
"""The default: genai-prices' bundled data, no prices of your own."""


def as_pricing(pricing: Pricing | Mapping[str, Price | Mapping[str, object]] | None) -> Pricing:
    """What every ``pricing=`` takes: a :class:`Pricing`, a mapping of prices (before the
    bundled data), or ``None`` (the bundled data alone)."""
    if pricing is None:
        return BUNDLED
    if isinstance(pricing, Pricing):
        return pricing
    return Pricing(pricing)
