from tuneloop.db import run_alembic_env
from tuneloop_gateway.db import Base

run_alembic_env(Base.metadata)
