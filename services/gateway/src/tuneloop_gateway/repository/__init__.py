"""The gateway's one data-access boundary: one repository per aggregate.

Every method is ``async`` and runs its SQL in a worker thread (:func:`tuneloop.offload.offloaded`,
the one way the services leave the event loop for blocking work); nothing else in the gateway
touches the database. A method is one unit of work (one session, one thread hop): checks and the
write they guard happen in the same transaction. Rows come back detached (the sessions do not
expire them on commit): the services shape the API's views from them.

:mod:`.keys` (API keys), :mod:`.evals` (eval runs), :mod:`.promotions` (promotion decisions),
:mod:`.canaries` (canary releases and their arms' feedback), :mod:`.captures` (captured traffic,
its feedback, review and retention).
"""

from .canaries import CanaryRepository
from .captures import CaptureRepository
from .evals import EvalRepository
from .keys import KeyRepository
from .promotions import PromotionRepository

__all__ = ["CanaryRepository", "CaptureRepository", "EvalRepository", "KeyRepository",
           "PromotionRepository"]
