"""tuneloop trainer service: LoRA jobs (unsloth | peft), merged 16-bit models, verified exports (port 8002).

The service (FastAPI, SQLite queue, supervisor) never imports torch; each job runs in its own
process (``python -m tuneloop_trainer.run_job <job-id>``) that only needs the artifact store.
"""
