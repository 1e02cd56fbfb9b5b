"""dvc.yaml against the code and configuration each stage really uses, so `dvc repro` reruns a
stage whenever something that can change its outputs changed.

Everything is derived from the sources: the imports of each stage's pipeline package (read from
the files, lazy imports included), its datasets and parameter blocks, and conf/base.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from parse import parse

from conftest import PROJECT_ROOT
from dmae_pipeline.pipeline_registry import register_pipelines

SRC = PROJECT_ROOT / "src"
BASE = PROJECT_ROOT / "conf" / "base"
PIPELINES = register_pipelines()
# The default chain's pipelines (compare runs on conf/compare, which DVC does not track).
STAGES = sorted(
    name
    for name, pipeline in PIPELINES.items()
    if name != "__default__" and set(pipeline.nodes) <= set(PIPELINES["__default__"].nodes)
)
# What every `kedro run` loads besides the stage's pipeline package: the project's settings (and
# the hooks they register), and the registry, whose file counts but whose imports (every
# pipeline package) do not: a run runs its stage's nodes only.
RUN_MODULES = ["dmae_pipeline.settings"]
REGISTRY = SRC / "dmae_pipeline" / "pipeline_registry.py"


def dvc_stages() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def entries(stage: dict[str, Any], kind: str) -> dict[str, Any]:
    """A stage's deps, outs or params as {path: options}."""
    found = {}
    for entry in stage.get(kind, []):
        found.update(entry if isinstance(entry, dict) else {entry: None})
    return found


def covered(path: Path | str, roots) -> bool:
    """Whether ``path`` is one of ``roots`` or lies inside one of them."""
    path = Path(path)
    return any(path == Path(r) or Path(r) in path.parents for r in roots)


def relative(path: Path) -> str:
    return path.relative_to(PROJECT_ROOT).as_posix()


# --- code ---------------------------------------------------------------------------------


def module_files(name: str, src: Path) -> list[Path] | None:
    """The files that importing module ``name`` runs (its packages' ``__init__.py`` first), or
    None if ``name`` is not a module under ``src`` (e.g. a class imported from one)."""
    files, path = [], src
    for part in name.split("."):
        path = path / part
        if (path / "__init__.py").is_file():
            files.append(path / "__init__.py")
        elif path.with_suffix(".py").is_file():
            files.append(path.with_suffix(".py"))
        elif not path.is_dir():  # a directory without __init__.py is a namespace package
            return None
    return files


def imported_names(file: Path, module: str) -> set[str]:
    """Every module ``file`` may import, anywhere in it (lazy imports inside functions too)."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def code_closure(modules: list[str], src: Path = SRC) -> set[Path]:
    """The dmae_pipeline files under ``src`` that importing ``modules`` can load, transitively."""
    files, todo, seen = set(), list(modules), set()
    while todo:
        name = todo.pop()
        if name in seen or not name.startswith("dmae_pipeline"):
            continue
        seen.add(name)
        found = module_files(name, src)
        if found is None:
            continue
        for file in found:
            if file not in files:
                files.add(file)
                module = ".".join(file.relative_to(src).with_suffix("").parts)
                todo.extend(imported_names(file, module.removesuffix(".__init__")))
    return files


def dataset_type_modules(entry: Any) -> list[str]:
    """The dmae_pipeline modules behind the dataset types named in a catalog entry."""
    if isinstance(entry, dict):
        return [m for value in entry.values() for m in dataset_type_modules(value)]
    if isinstance(entry, str) and entry.startswith("dmae_pipeline."):
        return [entry.rpartition(".")[0]]  # module.Class
    return []


# --- configuration ------------------------------------------------------------------------


def conf_files(kind: str) -> list[Path]:
    """conf/base files that Kedro reads as ``kind`` (its patterns: kind*, kind*/**, **/kind*)."""
    return sorted(
        path
        for path in BASE.rglob("*")
        if path.suffix in {".yml", ".yaml", ".json"}
        and (path.name.startswith(kind) or path.relative_to(BASE).parts[0].startswith(kind))
    )


def load_conf(file: Path) -> dict[str, Any]:
    """A conf/base file with its ``${globals:...}`` references resolved, as Kedro reads it."""
    folders = yaml.safe_load((BASE / "globals.yml").read_text())

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, str):
            return re.sub(r"\$\{globals:([\w.]+)\}", lambda m: lookup(m.group(1)), value)
        return value

    def lookup(key: str) -> str:
        value = folders
        for part in key.split("."):
            value = value[part]
        return str(value)

    return resolve(yaml.safe_load(file.read_text()) or {})


def catalog() -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every conf/base catalog entry (dataset factories included): name -> (file, entry)."""
    found = {}
    for file in conf_files("catalog"):
        for name, entry in load_conf(file).items():
            if not name.startswith("_"):
                found[name] = (file, entry)
    return found


def catalog_entries_for(dataset: str, entries_: dict) -> list[tuple[Path, dict[str, Any]]]:
    """The entries that can define ``dataset``: its own, or every factory pattern it matches."""
    if dataset in entries_:
        return [entries_[dataset]]
    return [e for name, e in entries_.items() if "{" in name and parse(name, dataset)]


def data_paths(entry: Any) -> list[str]:
    """The file and folder paths a catalog entry reads or writes (nested datasets included)."""
    if not isinstance(entry, dict):
        return []
    paths = [v for k, v in entry.items() if k in {"filepath", "path"} and isinstance(v, str)]
    return paths + [p for v in entry.values() for p in data_paths(v)]


def parameters() -> dict[str, tuple[Path, Any]]:
    """Top-level parameter block -> (the conf/base file that defines it, its values)."""
    return {
        block: (file, values)
        for file in conf_files("parameters")
        for block, values in load_conf(file).items()
    }


def dir_parameters(block: Any, prefix: str) -> dict[str, str]:
    """The ``*_dir`` parameters of a block (folders a stage writes state into)."""
    if not isinstance(block, dict):
        return {}
    found = {}
    for key, value in block.items():
        if key.endswith("_dir") and isinstance(value, str):
            found[f"{prefix}.{key}"] = value
        found.update(dir_parameters(value, f"{prefix}.{key}"))
    return found


# --- what a stage needs, and what its dvc.yaml entry misses --------------------------------


def pipeline_of(name: str):
    return PIPELINES[name]


def pipeline_packages(pipeline) -> list[str]:
    """The packages under pipelines/ whose nodes ``pipeline`` runs."""
    return sorted({node.func.__module__.rpartition(".")[0] for node in pipeline.nodes})


def datasets_of(pipeline) -> set[str]:
    return {d for d in pipeline.all_inputs() | pipeline.all_outputs() if not is_parameter(d)}


def is_parameter(dataset: str) -> bool:
    return dataset == "parameters" or dataset.startswith("params:")


def parameter_keys(pipeline) -> set[str]:
    """The parameters ``pipeline`` reads, as dotted keys (a block, or a key inside one)."""
    keys = {d.removeprefix("params:") for d in pipeline.inputs() if is_parameter(d)}
    return set(parameters()) if "parameters" in keys else keys


def parameter_blocks(pipeline) -> set[str]:
    return {key.split(".")[0] for key in parameter_keys(pipeline)}


# Parameters that change no output of a stage, which must then not depend on them: the batch size
# only schedules certification's forward passes (the log fingerprint leaves it out), so changing
# it resumes the logs rather than rerunning the stage.
NEUTRAL = {"certify": {"certify.batch_size"}}
# Folders of resumable state that a stage keeps across reruns (a ``persist`` output of its own):
# each certification log is named after the fingerprint of what its rows depend on, so a rerun
# resumes only the logs it would write and starts others.
PERSISTENT = {"certify.log_dir"}


def params_missing(key: str, listed: list[str] | None, neutral: set[str]) -> bool:
    """Whether the keys ``listed`` for a params file (None: the whole file) miss ``key``: neither
    it nor a block above it is listed, nor, for a block, every key of it but the ``neutral``."""
    if listed is None or any(key == k or key.startswith(f"{k}.") for k in listed):
        return False
    values = parameters()[key][1] if key in parameters() else None
    if not isinstance(values, dict):
        return True
    return any(
        params_missing(f"{key}.{k}", listed, neutral) for k in values if f"{key}.{k}" not in neutral
    )


def missing_code(name: str, stage: dict[str, Any]) -> list[str]:
    """dmae_pipeline files stage ``name`` runs that no deps entry covers."""
    entries_ = catalog()
    types = [
        module
        for dataset in datasets_of(pipeline_of(name))
        for _, entry in catalog_entries_for(dataset, entries_)
        for module in dataset_type_modules(entry)
    ]
    files = code_closure([*pipeline_packages(pipeline_of(name)), *RUN_MODULES, *types]) | {REGISTRY}
    deps = entries(stage, "deps")
    return sorted(relative(f) for f in files if not covered(relative(f), deps))


def missing_conf(name: str, stage: dict[str, Any]) -> list[str]:
    """Catalog and globals files, and parameter blocks, that stage ``name`` reads untracked."""
    pipeline, entries_ = pipeline_of(name), catalog()
    files = {f for d in datasets_of(pipeline) for f, _ in catalog_entries_for(d, entries_)}
    files |= set(conf_files("globals"))
    deps, params = entries(stage, "deps"), entries(stage, "params")
    missing = [relative(f) for f in sorted(files) if relative(f) not in deps]
    blocks, neutral = parameters(), NEUTRAL.get(name, set())
    for key in sorted(parameter_keys(pipeline)):
        block = key.split(".")[0]
        file = relative(blocks[block][0]) if block in blocks else None
        if file not in params or params_missing(key, params[file], neutral):
            missing.append(f"params {key}")
    return missing


def neutral_params(name: str, stage: dict[str, Any]) -> list[str]:
    """The parameters that change no output of stage ``name`` but that it depends on."""
    listed = {k for keys in entries(stage, "params").values() for k in keys or [None]}
    return sorted(
        key
        for key in NEUTRAL.get(name, set())
        if None in listed or any(key == k or key.startswith(f"{k}.") for k in listed if k)
    )


def missing_data(name: str, stage: dict[str, Any]) -> list[str]:
    """Catalog paths stage ``name`` reads that are no deps, or writes that are no outs; and
    ``*_dir`` folders of its own parameter block (where it writes its state; other blocks it
    reads are only read) outside the outs that DVC clears before a rerun."""
    pipeline, entries_ = pipeline_of(name), catalog()
    deps = entries(stage, "deps")
    outs = entries(stage, "outs") | entries(stage, "metrics") | entries(stage, "plots")
    missing = []
    for kind, roots, datasets in [
        ("deps", deps, pipeline.inputs()),
        ("outs", outs, pipeline.all_outputs()),
    ]:
        for dataset in sorted(d for d in datasets if not is_parameter(d)):
            for _, entry in catalog_entries_for(dataset, entries_):
                missing += [f"{kind} {p}" for p in data_paths(entry) if not covered(p, roots)]
    kept = [path for path, options in outs.items() if (options or {}).get("persist")]
    cleared = [path for path in outs if path not in kept]
    blocks = parameters()
    for block in sorted(parameter_blocks(pipeline) & {name}):
        for key, path in dir_parameters(blocks.get(block, (None, None))[1], block).items():
            if key in PERSISTENT and path not in kept:
                missing.append(f"persistent outs {key}={path}")
            elif key not in PERSISTENT and not covered(path, cleared):
                missing.append(f"cleared outs {key}={path}")
    return missing


# --- the tests ----------------------------------------------------------------------------


def test_there_is_one_stage_per_pipeline_and_it_runs_that_pipeline_on_the_base_env():
    """Pinning --env keeps KEDRO_ENV (and conf/local) from changing what a stage runs: DVC
    tracks conf/base only. scripts/kedro finds Kedro with or without the venv activated."""
    stages = dvc_stages()
    assert sorted(stages) == STAGES
    for name, stage in stages.items():
        assert shlex.split(stage["cmd"]) == [
            "scripts/kedro",
            "run",
            "--env=base",
            f"--pipelines={name}",
        ]


@pytest.mark.parametrize("name", STAGES)
def test_stage_depends_on_every_module_it_runs(name):
    assert missing_code(name, dvc_stages()[name]) == []


@pytest.mark.parametrize("name", STAGES)
def test_stage_depends_on_its_catalog_files_and_parameter_blocks(name):
    assert missing_conf(name, dvc_stages()[name]) == []


@pytest.mark.parametrize("name", STAGES)
def test_stage_declares_what_it_reads_and_writes_and_dvc_clears_its_run_state(name):
    """Training runs live inside an output that DVC removes before a rerun: a stage rerun for a
    code change must not resume a finished run. Certification logs are an output of their own
    that DVC keeps: their fingerprint decides what a rerun resumes."""
    assert missing_data(name, dvc_stages()[name]) == []


@pytest.mark.parametrize("name", STAGES)
def test_stage_does_not_depend_on_what_changes_none_of_its_outputs(name):
    """A new certify.batch_size must not send `dvc repro` through certification again."""
    assert neutral_params(name, dvc_stages()[name]) == []


# A deliberately wrong dvc.yaml: the certify stage as it once was, listing smoothing/ but not the
# transforms, the classifier or the file helpers it runs, nor the data_prep and finetune catalog
# files that define its inputs, depending on the batch size and on no radii, and with logs that DVC
# deletes before every rerun.
OLD_CERTIFY = {
    "cmd": "kedro run --pipelines=certify",
    "deps": [
        "src/dmae_pipeline/smoothing",
        "src/dmae_pipeline/pipelines/certify",
        "conf/base/catalog_certify.yml",
        "data/05_model_input/dataset_spec.json",
        "data/05_model_input/test.pt",
        "data/06_models/finetune",
    ],
    "params": [{"conf/base/parameters_certify.yml": ["certify"]}],
    "outs": [
        "data/07_model_output/certify",
        "data/07_model_output/certification_results.csv",
    ],
}


def test_the_checks_catch_what_the_old_certify_stage_missed():
    code = missing_code("certify", OLD_CERTIFY)
    for file in ["data/transforms.py", "models/classifier.py", "io.py", "settings.py", "hooks.py"]:
        assert f"src/dmae_pipeline/{file}" in code
    assert "src/dmae_pipeline/catalog.py" in code  # the catalog's dataset type
    assert not any(f.startswith("src/dmae_pipeline/smoothing/") for f in code)
    conf = missing_conf("certify", OLD_CERTIFY)
    assert {"conf/base/catalog_data_prep.yml", "conf/base/catalog_finetune.yml"} <= set(conf)
    assert {"params report.radii", "params finetune.sigmas"} <= set(conf)
    assert "conf/base/catalog_certify.yml" not in conf
    assert "params certify" not in conf
    assert missing_data("certify", OLD_CERTIFY) == [
        "persistent outs certify.log_dir=data/07_model_output/certify"
    ]
    assert neutral_params("certify", OLD_CERTIFY) == ["certify.batch_size"]
    stage = dvc_stages()["certify"]
    keys = entries(stage, "params")["conf/base/parameters_certify.yml"]
    for short in [["certify.n"], [k for k in keys if k != "certify.mode"]]:
        params = {**OLD_CERTIFY, "params": [{"conf/base/parameters_certify.yml": short}]}
        assert "params certify" in missing_conf("certify", params)
    outs = {**OLD_CERTIFY, "outs": [{"data/07_model_output": {"persist": True}}]}
    assert "persistent outs certify.log_dir=data/07_model_output/certify" in missing_data(
        "certify", outs
    )


def test_lazy_and_relative_imports_are_followed(tmp_path):
    package = tmp_path / "dmae_pipeline"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .a import f\n")
    (package / "sub" / "a.py").write_text("def f():\n    from dmae_pipeline import b\n")
    (package / "b.py").write_text("from dmae_pipeline.sub import a\n")
    (package / "c.py").write_text("")
    files = code_closure(["dmae_pipeline.sub"], src=tmp_path)
    assert {f.relative_to(package).as_posix() for f in files} == {
        "__init__.py",
        "sub/__init__.py",
        "sub/a.py",
        "b.py",
    }
