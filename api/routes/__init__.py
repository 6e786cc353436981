"""One router per resource, gathered into ``api_router`` (mounted under /v1) and ``health_router``."""

from fastapi import APIRouter

from api.routes import catalogue, datasets, health, jobs, manage, models

api_router = APIRouter()
api_router.include_router(manage.router)  # first: /jobs/compare and the list are not job ids
api_router.include_router(manage.uploads_router)
api_router.include_router(jobs.router)
api_router.include_router(models.router)
api_router.include_router(datasets.router)
api_router.include_router(catalogue.router)

health_router = health.router

__all__ = ["api_router", "health_router"]
