from tuneloop.db import run_alembic_env
from tuneloop_dataset.db import Base

run_alembic_env(Base.metadata)
