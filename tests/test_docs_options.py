"""Every options table of the docs and every SAGE help text agrees with SageConfig's fields.

The tables are generated (``python -m timm_sage.tools.docs_options --write``) and the help texts are
built at run time, both from the fields' metadata. These tests read what a user reads (the pages, the
``--help`` output) and check it against ``dataclasses.fields(SageConfig)`` by their own reading, so a
field added without re-running the generator, or a generator that drops a field, a default or a choice,
fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import shutil
from pathlib import Path

import pytest

from timm_sage import SageConfig, SageMixup, launcher, plugin
from timm_sage.config import DEFAULT_ORIGINS, _option, option_infos
from timm_sage.tools import cli, docs_options
from timm_sage.tools.report import read_between_markers

ROOT = Path(__file__).resolve().parents[1]
YAML_PAGES = {"docs/timm.md", "docs/training.md"}  # rows name the sage_* key; the others the field


def _python(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[\w.]+", text))


def page_problems(root: Path, config: type = SageConfig) -> list[str]:
    """What the options sections of the pages under ``root`` miss about ``config``'s fields (skipped
    where albumentations is not installed: docs/albumentations.md's table follows SageMix's signature)."""
    # Here, not at the top: the module must collect without albumentations (the GPU check's pytest -m cuda).
    SageMix = pytest.importorskip("timm_sage.albumentations").SageMix  # noqa: N806
    fields = dataclasses.fields(config)
    problems = []
    for page, name in docs_options.SECTIONS:
        body = read_between_markers(root / page, name)
        if body is None:
            problems.append(f"{page}: no section {name!r}")
            continue
        if docs_options.COMMAND not in body.splitlines()[0]:
            problems.append(f"{page}:{name} does not start by naming {docs_options.COMMAND!r}")
        if name.endswith("-signature"):
            takes = inspect.signature(SageMixup.__init__).parameters if "mixup" in name else None
            for f in fields:
                if takes is not None and f.name not in takes:
                    continue
                if f"{f.name}={_python(f.default)}" not in body:
                    problems.append(f"{page}:{name} lacks {f.name}={_python(f.default)}")
            continue
        rows = [line for line in body.splitlines() if line.startswith("| `")]
        for f in fields:
            if page == "docs/albumentations.md" and f.name not in inspect.signature(SageMix).parameters:
                continue  # SageMix takes the search options only (its maps come with the sample)
            key = f"sage_{f.name}" if page in YAML_PAGES else f.name
            row = next((r for r in rows if r.startswith(f"| `{key}`")), None)
            if row is None:
                problems.append(f"{page}:{name} has no row for {key}")
                continue
            if f"`{f.default}`" not in row and f"`{_python(f.default)}`" not in row:
                problems.append(f"{page}:{name}: the row of {key} does not give its default {f.default!r}")
            missing = [c for c in f.metadata["choices"] or () if c not in _words(row)]
            if missing:
                problems.append(f"{page}:{name}: the row of {key} does not name the choices {missing}")
            if f.metadata.get("origin") == "recipe" and "recipe" not in row:
                problems.append(f"{page}:{name}: the row of {key} hides that its default is the recipes'")
            if f.metadata["help"] not in row.replace("\\|", "|"):
                problems.append(f"{page}:{name}: the row of {key} does not say what it means")
    return problems


def help_entries(text: str) -> dict[str, str]:
    """argparse help output -> {flag: its line(s), whitespace collapsed}, for every ``--sage-*`` flag."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"\s{2}(--sage-[\w-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current is not None and line.startswith(" " * 6) and line.strip():
            entries[current] += " " + line
        else:
            current = None
    return {flag: " ".join(entry.split()) for flag, entry in entries.items()}


def help_problems(text: str, where: str) -> list[str]:
    entries = help_entries(text)
    problems = []
    for info in option_infos():
        flag = "--sage-" + info.name.replace("_", "-")
        entry = entries.get(flag)
        if entry is None:
            problems.append(f"{where}: no {flag}")
            continue
        if f"(default {info.default}" not in entry:
            problems.append(f"{where}: {flag} does not give its default {info.default}")
        if " ".join(info.help.split()) not in entry:
            problems.append(f"{where}: {flag} does not say what it means")
        if info.choices and "{" + ",".join(info.choices) + "}" not in entry:
            problems.append(f"{where}: {flag} does not list its choices {info.choices}")
        if info.origin == "recipe" and "recipe" not in entry:
            problems.append(f"{where}: {flag} hides that its default is the recipes'")
    if "--sage-seed" not in entries or "default" not in entries["--sage-seed"]:
        problems.append(f"{where}: --sage-seed without its default")
    return problems


# --------------------------------------------------------------------------------------------- fields
def test_every_field_says_what_it_means_and_where_its_default_comes_from():
    for f in dataclasses.fields(SageConfig):
        meta = f.metadata
        assert meta["help"].strip(), f"{f.name}: no help"
        assert meta.get("origin") in DEFAULT_ORIGINS, (
            f"SageConfig.{f.name}: say where its default comes from: _option(..., origin=one of "
            f"{DEFAULT_ORIGINS}, reference='the reference code's flag and default, or what it does')"
        )
        assert meta.get("reference"), (
            f"SageConfig.{f.name}: reference= (the reference code's flag, or 'no option')"
        )
        if meta["origin"] == "recipe":
            assert meta.get("recipes"), f"{f.name}: a recipe default needs recipes= (the values they pass)"


def test_the_defaults_that_are_not_the_reference_codes_say_so():
    infos = {info.name: info for info in option_infos()}
    # The reference code's argparse defaults: --upper_lambda 1.0, --rand_pos 0.5, --update_ratio 1.0.
    assert infos["upper_lambda"].origin == "recipe" and "1.0" in infos["upper_lambda"].reference
    assert infos["rand_pos"].origin == "recipe" and "0.5" in infos["rand_pos"].reference
    assert infos["update_ratio"].origin == "reference" and "0.7" in infos["update_ratio"].recipes
    assert "0.5" in infos["update_ratio"].recipes


# ---------------------------------------------------------------------------------------------- pages
def test_the_options_sections_are_generated_from_the_current_fields():
    pytest.importorskip("timm_sage.albumentations")  # the generator writes the albumentations table
    stale = docs_options.stale_sections(ROOT)
    assert not stale, f"stale options sections {stale}: run {docs_options.COMMAND}"


def test_every_options_section_names_every_field_with_its_default_and_choices():
    assert page_problems(ROOT) == []


def test_every_field_is_a_keyword_of_sage_mixup():
    assert set(SageConfig.names()) <= set(inspect.signature(SageMixup.__init__).parameters)


@dataclasses.dataclass(frozen=True)
class _Extended(SageConfig):
    """SageConfig with one more field, as a contributor would add it."""

    dummy_option: str = _option(
        "alpha", "an option nobody documented yet", choices=("alpha", "beta"), kind=str, origin="reference",
        reference="no option, alpha",
    )  # fmt: skip


def test_a_field_added_without_regenerating_the_docs_fails(tmp_path):
    # The pages as they are do not document the new field: both checks say so, for every page.
    # (SageMixup's and SageMix's signatures do not take the new keyword: their sections do not change.)
    problems = page_problems(ROOT, _Extended)
    expected = [
        (page, name)
        for page, name in docs_options.SECTIONS
        if name != "sagemixup-signature" and page != "docs/albumentations.md"
    ]
    assert len(expected) == len(docs_options.SECTIONS) - 2
    for page, name in expected:
        assert any(p.startswith(f"{page}:{name}") and "dummy_option" in p for p in problems), (page, name)
    assert sorted(docs_options.stale_sections(ROOT, _Extended)) == sorted(f"{p}:{n}" for p, n in expected)
    # Running the generator documents it everywhere, with no other change.
    for page in {page for page, _ in docs_options.SECTIONS}:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    docs_options.write_sections(tmp_path, _Extended)
    assert page_problems(tmp_path, _Extended) == []
    assert docs_options.stale_sections(tmp_path, _Extended) == []


def test_the_generator_command_checks_and_writes(tmp_path, capsys):
    pytest.importorskip("timm_sage.albumentations")  # the generator writes the albumentations table
    for page in {page for page, _ in docs_options.SECTIONS}:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text((ROOT / page).read_text().replace("`0.01`", "`0.02`"))
    assert docs_options.main(["--root", str(tmp_path)]) == 1
    assert "stale: docs/timm.md:sage-options" in capsys.readouterr().err
    assert docs_options.main(["--root", str(tmp_path), "--write"]) == 0
    assert docs_options.main(["--root", str(tmp_path)]) == 0
    for page in {page for page, _ in docs_options.SECTIONS}:
        assert (tmp_path / page).read_text() == (ROOT / page).read_text()


# ----------------------------------------------------------------------------------------- help texts
def test_timm_sage_train_help_lists_the_sage_keys_in_their_own_group(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    sage_part, _, config_part = text.partition("\nconfig keys:")
    assert "SAGE options" in sage_part and config_part, "the sage_* keys stand in their own group"
    assert help_problems(sage_part, "timm-sage train --help") == []
    assert "--sage-" not in config_part  # not repeated among train.py's keys
    assert "(default the config's seed)" in " ".join(help_entries(sage_part)["--sage-seed"].split())


def test_timm_sage_train_launcher_help_lists_each_flag_with_meaning_and_default(capsys):
    assert launcher.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert help_problems(text, "timm-sage-train --help") == []
    assert "torch.initial_seed()" in help_entries(text)["--sage-seed"]


def test_the_plugin_options_carry_meaning_and_default():
    assert list(plugin.SAGE_OPTIONS) == [*SageConfig.names(), "seed", "preset"]
    for info in option_infos():
        kind, choices, help_text = plugin.SAGE_OPTIONS[info.name]
        assert (kind, choices) == (info.kind, info.choices)
        assert help_text.startswith(info.help) and f"(default {info.default}" in help_text
        assert info.origin != "recipe" or "recipe" in help_text
    assert "torch.initial_seed()" in plugin.SAGE_OPTIONS["seed"][2]
