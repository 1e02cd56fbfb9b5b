"""The one kind of error a user can fix: a wrong parameter, env, pipeline name or input file."""


class UserError(ValueError):
    """Something the user gave is wrong; the message names it and says what to do. ``kedro run``
    (``dmae_pipeline.cli``) reports it as that message alone; any other error is a bug and keeps
    its traceback."""
