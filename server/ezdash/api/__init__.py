"""The Tornado HTTP API (contract: shared/API.md, served as /api/openapi.json)."""
