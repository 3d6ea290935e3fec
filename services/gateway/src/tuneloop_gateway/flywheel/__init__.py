"""The flywheel: capture production traffic (masked), curate it, retrain on it (issue 18)."""
