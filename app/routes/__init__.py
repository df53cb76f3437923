"""HTTP routes: `api` (REST, /api/v1), `pages` (browser), `docs` (OpenAPI + offline Swagger UI).

Routes stay thin: parse the request, call one service, return a schema, file or template.
"""
