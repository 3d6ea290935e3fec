"""tuneloop shared package: the ground every service stands on.

Modules:
  settings   ServiceSettings base (pydantic-settings, env prefix per service)
  errors     the one OpenAI-style error envelope, domain exceptions, FastAPI handlers
  app        build_service_app(): request ids, structured logs, /health /ready /metrics
  metrics    Prometheus helpers (per-app registry, HTTP middleware)
  storage    ArtifactStore over fsspec with atomic writes
  db         SQLAlchemy 2 database + Alembic migrations per service
  ids        id generation/validation (ids, never user strings, in paths)
  clients    typed async HTTP clients between services
  testing    ServiceProcess fixture helper, tiny local models
  examples   built-in example datasets (the article's support-ticket task)
"""

__version__ = "0.1.0"
