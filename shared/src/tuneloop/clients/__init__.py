"""Typed async clients between services.

``base.ServiceClient`` is the one HTTP client per peer (opened in the lifespan, explicit
timeouts, retries only on connection errors of idempotent requests, errors parsed into one
:class:`ServiceError`). Each service's typed client lives in its own module here
(``dataset.py``, ``trainer.py``, ``inference.py``, ``gateway.py``).
"""

from .base import ServiceClient, ServiceError

__all__ = ["ServiceClient", "ServiceError"]
