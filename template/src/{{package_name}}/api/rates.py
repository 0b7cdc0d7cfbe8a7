"""Exchange rates from an upstream service, through the shared HTTP client and the query cache."""

from typing import Annotated

import httpx
from fastapi import APIRouter, HTTPException, Query, status
from pydantic import TypeAdapter, ValidationError

from ..errors import documented
from ..lifespan import CacheDep, HttpClientDep
from ..schemas import Rates

router = APIRouter(prefix="/rates", tags=["rates"])

_RATES = TypeAdapter(Rates)


@router.get("", responses=documented(502, 504))
async def get_rates(
    http: HttpClientDep,
    cache: CacheDep,
    base: Annotated[str, Query(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")] = "EUR",
) -> Rates:
    async def fetch() -> Rates:
        try:
            response = await http.get("/rates", params={"base": base})
            response.raise_for_status()
            return Rates.model_validate_json(response.content)
        except httpx.TimeoutException:
            raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "upstream timed out") from None
        except (httpx.HTTPError, ValidationError) as exc:
            raise HTTPException(
                status.HTTP_502_BAD_GATEWAY, f"upstream failed: {type(exc).__name__}"
            ) from None

    return await cache.get_or_set_model(cache.key("rates", base), _RATES, fetch)
