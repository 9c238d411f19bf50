"""``/v1/users/{user_id}/recommendations|predictions|reconstructions`` and the ad-hoc ``/v1/recommendations``,
``/v1/predictions``, ``/v1/reconstructions`` (a set of ratings in the body instead of a stored user)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.auth.dependencies import ReadAccess
from service.db import SessionDep
from service.errors import ApiError
from service.serving import service
from service.serving.schemas import (
    AdHocRecommendationIn,
    PredictionsIn,
    PredictionsOut,
    RecommendationsOut,
    ReconstructionIn,
    ReconstructionOut,
)

router = APIRouter(prefix="/v1", tags=["recommendations"])

ModelName = Annotated[str | None, Query(description="model name; default: the most recently activated model")]


def _limits(request: Request, n: int) -> None:
    service.check_limits(n=n, offset=0, max_n=request.app.state.settings.max_recommendations)


def _reconstruction_limits(request: Request, body: ReconstructionIn) -> None:
    settings = request.app.state.settings
    if body.samples > settings.max_reconstruction_samples:
        raise ApiError(422, f"samples must be at most {settings.max_reconstruction_samples}",
                       details=[{"loc": ["body", "samples"], "msg": "too large"}])
    if body.steps > settings.max_reconstruction_steps:
        raise ApiError(422, f"steps must be at most {settings.max_reconstruction_steps}",
                       details=[{"loc": ["body", "steps"], "msg": "too large"}])


@router.get("/users/{user_id}/recommendations", response_model=RecommendationsOut)
async def user_recommendations(
        user_id: str, request: Request, _: ReadAccess,
        n: Annotated[int, Query(ge=1)] = 10, offset: Annotated[int, Query(ge=0)] = 0, model: ModelName = None,
        exclude_rated: Annotated[bool, Query(description="leave out items the user rated")] = True):
    # The hot path: one thread-pool hand-off for all its blocking work (a sync endpoint plus a session dependency
    # cost four), no request session (it writes nothing; the user's ratings come in one autocommit statement),
    # and the body serialised once (RecommendationsOut documents it; the dict is built to that shape).
    _limits(request, n)
    body = await run_in_threadpool(_user_recommendations, request.app.state, user_id, n, offset, model, exclude_rated)
    return Response(body, media_type="application/json")


def _user_recommendations(state, user_id: str, n: int, offset: int, model: str | None, exclude_rated: bool) -> bytes:
    loaded = state.model_cache.get(model)
    known = service.known_for_user_read(state.db, loaded, user_id)
    return service.recommendations_json(
        service.recommend(state.db.session_factory, loaded, known, n=n, offset=offset, exclude_rated=exclude_rated))


@router.post("/recommendations", response_model=RecommendationsOut)
def ad_hoc_recommendations(body: AdHocRecommendationIn, request: Request, session: SessionDep, _: ReadAccess):
    """Recommendations for an anonymous session: its ratings in the body, nothing stored."""
    _limits(request, body.n)
    loaded = request.app.state.model_cache.get(body.model)
    known = service.known_ad_hoc(session, loaded, [r.model_dump() for r in body.ratings],
                                 request.app.state.settings.rating_scale)
    return service.recommend(session, loaded, known, n=body.n, offset=body.offset, exclude_rated=body.exclude_rated)


@router.get("/users/{user_id}/predictions", response_model=PredictionsOut)
def user_predictions(user_id: str, request: Request, session: SessionDep, _: ReadAccess,
                     items: Annotated[str, Query(min_length=1, description="comma-separated item ids")],
                     model: ModelName = None):
    wanted = [i.strip() for i in items.split(",") if i.strip()]
    if not wanted or len(wanted) > 1000:
        raise ApiError(422, "items must name 1 to 1000 item ids", details=[{"loc": ["query", "items"], "msg": "bad list"}])
    loaded = request.app.state.model_cache.get(model)
    known = service.known_for_user(session, loaded, user_id)
    return service.predict(session, loaded, known, wanted)


@router.post("/predictions", response_model=PredictionsOut)
def ad_hoc_predictions(body: PredictionsIn, request: Request, session: SessionDep, _: ReadAccess):
    loaded = request.app.state.model_cache.get(body.model)
    known = service.known_ad_hoc(session, loaded, [r.model_dump() for r in body.ratings],
                                 request.app.state.settings.rating_scale)
    return service.predict(session, loaded, known, body.items)


@router.post("/users/{user_id}/reconstructions", response_model=ReconstructionOut)
def user_reconstructions(user_id: str, body: ReconstructionIn, request: Request, session: SessionDep, _: ReadAccess):
    """``steps`` Gibbs sweeps from the user's clamped ratings, ``samples`` chains, optional ``seed``."""
    _reconstruction_limits(request, body)
    if body.ratings:
        raise ApiError(422, "ratings: not allowed here (the user's stored ratings are used)",
                       details=[{"loc": ["body", "ratings"], "msg": "use POST /v1/reconstructions for ad-hoc ratings"}])
    loaded = request.app.state.model_cache.get(body.model)
    known = service.known_for_user(session, loaded, user_id)
    return service.reconstruct(session, loaded, known, items=body.items, steps=body.steps, samples=body.samples,
                               seed=body.seed)


@router.post("/reconstructions", response_model=ReconstructionOut)
def ad_hoc_reconstructions(body: ReconstructionIn, request: Request, session: SessionDep, _: ReadAccess):
    _reconstruction_limits(request, body)
    loaded = request.app.state.model_cache.get(body.model)
    known = service.known_ad_hoc(session, loaded, [r.model_dump() for r in body.ratings],
                                 request.app.state.settings.rating_scale)
    return service.reconstruct(session, loaded, known, items=body.items, steps=body.steps, samples=body.samples,
                               seed=body.seed)
