"""Errors a user can fix from their message (a damaged file, a checkpoint of another run, a diverging loss):
the command lines print them as one line and exit with status 2 (pclc.jobs.run_job)."""


class UserError(Exception):
    """Base of pclc's own errors that are not bugs."""
