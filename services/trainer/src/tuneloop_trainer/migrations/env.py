from tuneloop.db import run_alembic_env
from tuneloop_trainer.db import Base

run_alembic_env(Base.metadata)
