"""What a pip user gets: the shipped configs in the wheel (one copy, the repository's train_configs/),
found by name; ``timm-sage configs`` and ``--version``; the LICENSE; one-line CLI errors for a bad model
or device."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import timm_sage
from timm_sage.tools import cli
from timm_sage.train.configs import describe, find_config, packaged_configs, study_configs

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "train_configs").glob("*.yaml"))


def test_package_list_covers_every_package_and_maps_the_configs_folder():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = project["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "timm_sage").rglob("__init__.py")}
    assert set(tool["packages"]) == found | {"timm_sage.train_configs"}
    assert tool["package-dir"] == {"timm_sage.train_configs": "train_configs"}
    assert not (ROOT / "timm_sage" / "train_configs").exists()  # no second copy in the repository
    assert project["project"]["dynamic"] == ["version"] and "version" not in project["project"]


def test_wheel_carries_the_configs_and_the_license(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("pyproject.toml needs setuptools >= 77 (SPDX licence string)")
    # a copy without build outputs, so a stale build/ of the checkout cannot leak into the wheel
    source = tmp_path / "source"
    skip = (".*", "build", "*.egg-info", "__pycache__", "output", "runs", "dist")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*skip))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("timm_sage-*.whl")
    assert wheel.name.startswith(f"timm_sage-{timm_sage.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    configs = sorted(Path(n).stem for n in names if n.startswith("timm_sage/train_configs/"))
    assert configs == SHIPPED
    assert not any("/studies/" in n or "fashion_mnist_scenes2" in n for n in names)  # study configs stay out
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "timm_sage/train/configs.py" in names and "timm_sage/_atomic.py" in names


def test_a_bare_name_finds_a_shipped_config_and_a_path_still_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sorted(packaged_configs()) == SHIPPED
    path = find_config("fashion_mnist_sage")
    assert path.read_text() == (ROOT / "train_configs" / "fashion_mnist_sage.yaml").read_text()
    assert find_config("fashion_mnist_sage.yaml") == path
    own = tmp_path / "fashion_mnist_sage.yaml"  # a file of that name in the current folder wins
    own.write_text("epochs: 1\n")
    assert find_config("fashion_mnist_sage.yaml") == Path("fashion_mnist_sage.yaml")
    assert find_config(str(own)) == own
    with pytest.raises(FileNotFoundError, match="'fashion_mnist_sag' is neither a file nor a shipped"):
        find_config("fashion_mnist_sag")
    with pytest.raises(FileNotFoundError, match="config file no/such.yaml does not exist"):
        find_config("no/such.yaml")
    args = cli.build_parser("train").parse_args(["train", "--config", "fashion_mnist_sage", "--epochs", "1"])
    from timm_sage.train.command import config_from_args

    cfg = config_from_args(args)
    assert cfg.mixup_mode == "sage" and cfg.epochs == 1 and cfg.experiment == "fashion_mnist_sage"


def test_study_configs_are_found_by_name_and_any_study_folder_counts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = find_config("fashion_mnist_scenes2_sage")
    assert path == ROOT / "docs" / "studies" / "scenes2" / "configs" / "fashion_mnist_scenes2_sage.yaml"
    assert find_config("fashion_mnist_scarce_vanilla.yaml").parent.parent.name == "scarce"
    assert find_config(str(path)) == path  # by path too
    # any docs/studies/STUDY/configs/*.yaml is a study's config; a study without configs/ is not listed
    for study, names in {"newstudy": ["b_sage", "a_vanilla"], "empty": []}.items():
        (tmp_path / study / "configs").mkdir(parents=True)
        for name in names:
            (tmp_path / study / "configs" / f"{name}.yaml").write_text("# x\nepochs: 1\n")
    (tmp_path / "norecord").mkdir()
    found = study_configs(tmp_path)
    assert list(found) == ["newstudy"] and list(found["newstudy"]) == ["a_vanilla", "b_sage"]


def test_study_command_takes_a_config_name(monkeypatch):
    from timm_sage.tools import study

    seen = {}

    def stop(configs, *args, **kwargs):
        seen["configs"] = configs
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run_study", stop)
    monkeypatch.setattr(study, "_epoch_seconds", lambda args, extra: None)
    parser = cli.build_parser("study")
    args = parser.parse_args(["study", "fashion_mnist_study_sage", "--output", "/nonexistent/x"])
    with pytest.raises(KeyboardInterrupt):
        study.run(args)
    folder = ROOT / "docs" / "studies" / "fmnist10k" / "configs"
    assert seen["configs"] == [folder / "fashion_mnist_study_sage.yaml"]


def test_configs_command_lists_one_line_each(capsys):
    assert cli.main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # the recipes first, under their heading; then each study's configs under its own
    headings = [index for index, line in enumerate(lines) if line and not line.startswith(" ")]
    assert lines[0] == "Recipes:" and [line.split()[0] for line in lines[1 : 1 + len(SHIPPED)]] == SHIPPED
    studies = study_configs()
    assert [lines[i].split()[1] for i in headings[1:]] == list(studies)
    for index, (study, configs) in zip(headings[1:], studies.items(), strict=True):
        assert lines[index].startswith(f"Study {study} (")
        assert [line.split()[0] for line in lines[index + 1 : index + 1 + len(configs)]] == list(configs)
    lines = [line.strip() for line in lines]
    first = next(line for line in lines if line.startswith("fashion_mnist_sage "))
    assert first.split(None, 1)[1] == describe(ROOT / "train_configs" / "fashion_mnist_sage.yaml")
    assert first.split(None, 1)[1].startswith("The main job: SAGE on Fashion-MNIST")
    assert cli.main(["configs", "fashion_mnist_sage"]) == 0
    assert "mixup_mode: sage" in capsys.readouterr().out
    assert cli.main(["configs", "nope"]) == 2
    assert "neither a file nor a shipped config" in capsys.readouterr().err


def test_version_license_and_changelog(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == timm_sage.__version__
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "Keep a Changelog" in changelog
    # The version has its section, and a minor release before 1.0 lists what it breaks (docs/api.md).
    version = timm_sage.__version__
    section = changelog.split(f"## [{version}]", 1)[1].split("\n## [", 1)[0]
    major, minor, patch = (int(part) for part in version.split("."))
    if major == 0 and minor > 0 and patch == 0:
        assert "### Breaking changes since" in section


def _train_error(argv: list[str], capsys) -> str:
    code = cli.main(["train", "--model", "preactresnet18_tiny", "--dataset", "fashion_mnist", *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_unknown_model_is_a_one_line_cli_error(capsys):
    err = _train_error(["--model", "no_such_model"], capsys)
    assert err.startswith("timm-sage train: error: model: 'no_such_model' is not a timm model name")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_a_one_line_cli_error(capsys):
    err = _train_error(["--device", "cuda"], capsys)
    assert "device: 'cuda' asked for, but no CUDA GPU is available" in err
    assert "device: 'tpu9' is not a torch device" in _train_error(["--device", "tpu9"], capsys)
