"""Review analytics (admin): per model version, the verdicts given, approve/reject shares, reject
reasons, time to a verdict by reading mode, agreement between readers (Cohen's κ) and how well the
lung-focus warning predicts a reject (AUROC). The figures are defined in app.services.analytics.

API:   GET /api/v1/analytics (admin).
Pages: /admin/analytics (admin; the same figures with charts).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app import schemas
from app.deps import AdminPage, AdminUser, SessionDep, SettingsDep
from app.routes.templating import render
from app.services import analytics

api = APIRouter(prefix="/api/v1", tags=["api"])
pages = APIRouter(include_in_schema=False)


@api.get("/analytics", response_model=analytics.Analytics, responses=schemas.ERRORS)
def review_analytics(session: SessionDep, settings: SettingsDep, _admin: AdminUser) -> analytics.Analytics:
    """Per model version with verdicts: what its reviewers said and how far its warnings predicted a reject."""
    return analytics.review_analytics(session=session, threshold=settings.lung_focus_threshold)


@pages.get("/admin/analytics", response_model=None)
def analytics_page(request: Request, session: SessionDep, settings: SettingsDep, admin: AdminPage) -> Response:
    figures = analytics.review_analytics(session=session, threshold=settings.lung_focus_threshold)
    return render(request, "analytics.html", user=admin, a=figures)


router = APIRouter()
router.include_router(api)
router.include_router(pages)
