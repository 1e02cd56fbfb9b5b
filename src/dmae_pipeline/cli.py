"""``kedro run`` for this project: Kedro's own, except that a mistake of the user's ends with one
line that names it and says what to do, without a traceback: an ``io.UserError`` (raised
wherever a parameter, an env, a pipeline name or an input file is refused), a parameter that
Kedro's validation refuses, or an interpolation in conf/ that names a key which is not there (a
misspelt ``--params`` value). Any other error is a bug and keeps its traceback."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.project import pipelines, settings
from kedro.framework.startup import bootstrap_project
from kedro.utils import find_kedro_project
from kedro.validation.exceptions import ParameterValidationError
from omegaconf import DictConfig
from omegaconf.errors import InterpolationKeyError

from dmae_pipeline.io import UserError


@click.group(name="dmae_pipeline")
def cli() -> None:
    """The project's commands."""


def _one_of(name: str, what: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"no {what} named {name!r}; {hint}the {what}s are {', '.join(known)}"


def check_names(env: str | None, pipeline_names: list[str], conf_source: str | None) -> None:
    """Refuse an env without a folder in the conf folder and a pipeline that is not
    registered."""
    project = find_kedro_project(Path.cwd()) or Path.cwd()
    bootstrap_project(project)
    conf = project / (conf_source or settings.CONF_SOURCE)
    if env is not None and conf.is_dir() and not (conf / env).is_dir():  # not an archive
        envs = sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name != "base")
        raise UserError(f"--env={env}: {_one_of(env, 'env', envs)} (the folders of {conf})")
    for name in pipeline_names:
        if name not in pipelines:
            raise UserError(f"--pipelines={name}: {_one_of(name, 'pipeline', sorted(pipelines))}")


def interpolation_problem(error: InterpolationKeyError) -> str:
    """One line for an interpolation naming a missing key: which key it is, where the
    interpolation is, and the keys that do exist at the first missing level."""
    match = re.match(r"Interpolation key '([^']+)' not found", str(error))
    if match is None or error.parent_node is None:
        return str(error).splitlines()[0]
    node: Any = error.parent_node._get_root()
    path, missing = match.group(1).split("."), match.group(1)
    for depth, part in enumerate(path):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(path[:depth]) or "the parameters"
            keys = ", ".join(node) if isinstance(node, DictConfig) else "none"
            missing = f"{where} has no key {part!r} (its keys: {keys})"
            break
        node = node._get_node(part)
    return (
        f"{error.full_key}: its interpolation names {match.group(1)}, but {missing}; check the "
        "values given with --params"
    )


def _run(**kwargs: Any) -> Any:
    try:
        check_names(kwargs["env"], list(kwargs["pipelines"] or []), kwargs["conf_source"])
        return kedro_run.callback(**kwargs)
    except (UserError, ParameterValidationError) as e:
        raise click.ClickException(str(e)) from None
    except InterpolationKeyError as e:
        raise click.ClickException(interpolation_problem(e)) from None


run = click.Command("run", callback=_run, params=kedro_run.params, help=kedro_run.help)
cli.add_command(run)
