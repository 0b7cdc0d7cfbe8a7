"""Exchange rates from an upstream service, through the shared HTTP client and the query cache."""

from typing import Annotated

import httpx
from fastapi import APIRouter, HTTPException, Query, status
from pydantic import TypeAdapter, ValidationError

from ..deps import CacheDep, HttpClientDep
from ..errors import documented
from ..schemas import Rates

router = APIRouter(prefix="/rates", tags=["rates"])

_RATES = TypeAdapter(Rates)


# The example's upstream is not part of the service: HTTP_UPSTREAM_URL names it (README,
# "The rates upstream"). Its failures are 502s that say which side to fix.
UPSTREAM_ADVICE = (
    "set HTTP_UPSTREAM_URL to a service answering GET /rates?base=EUR"
    ' with {"base": "EUR", "rates": {"USD": 1.08}}'
)


@router.get("", responses=documented(502, 504))
async def get_rates(
    http: HttpClientDep,
    cache: CacheDep,
    base: Annotated[str, Query(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")] = "EUR",
) -> Rates:
    """Rates for ``base`` from the upstream at HTTP_UPSTREAM_URL (``GET /rates?base=EUR``
    answering ``{"base": "EUR", "rates": {"USD": 1.08}}``), cached. None is configured by
    default: without one this answers 502, naming the setting."""

    async def fetch() -> Rates:
        try:
            response = await http.get("/rates", params={"base": base})
            response.raise_for_status()
            return Rates.model_validate_json(response.content)
        except httpx.TimeoutException:
            raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "upstream timed out") from None
        except httpx.ConnectError:
            raise HTTPException(
                status.HTTP_502_BAD_GATEWAY, f"upstream unreachable: {UPSTREAM_ADVICE}"
            ) from None
        except (httpx.HTTPError, ValidationError) as exc:
            raise HTTPException(
                status.HTTP_502_BAD_GATEWAY, f"upstream failed: {type(exc).__name__}"
            ) from None

    return await cache.get_or_set_model(cache.key("rates", base), _RATES, fetch)
