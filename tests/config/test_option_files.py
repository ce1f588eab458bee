"""`qconfig=<folder>/qconfig/<name>.yaml`: a qconfig file a run wrote (labquant-sensitivity's
proposal) chosen on the command line or in `lab.qconfigs`, as Hydra chooses any option."""

from __future__ import annotations

from pathlib import Path

import pytest

from labquant.config.groups import load_group_option
from labquant.config.overrides import check_group_overrides, with_option_files
from labquant.errors import ConfigError

MIXED = "_target_: labquant.quant.qconfigs.power_of_two\nname: my_mixed\nweight_bits: 4\n"


@pytest.fixture
def option(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "qconfig" / "my_mixed.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(MIXED)
    return path


def test_a_file_choice_becomes_its_name_with_its_folder_on_the_search_path(option):
    root = option.parent.parent.resolve()
    args = with_option_files(["-m", f"qconfig=pot,{option}", "model=small"])
    assert args == [
        "-m",
        "qconfig=pot,my_mixed",
        "model=small",
        f"hydra.searchpath=[file://{root}]",
    ]
    check_group_overrides(args)  # my_mixed is a choice now: no error
    with pytest.raises(ConfigError, match="unknown qconfig=my_mixed"):
        check_group_overrides(["qconfig=my_mixed"])  # not without the search path
    assert with_option_files(["qconfig=pot"]) == ["qconfig=pot"]
    assert load_group_option("qconfig", str(option)).name == "my_mixed"


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("missing/qconfig/nope.yaml", "no such file"),
        ("run/elsewhere/my_mixed.yaml", "Hydra finds qconfig options in a folder named qconfig/"),
        ("run/qconfig/pot.yaml", "pot is also a packaged qconfig"),
    ],
)
def test_a_file_that_cannot_be_chosen_is_one_line(tmp_path, where, needle):
    path = tmp_path / where
    if not where.startswith("missing"):
        path.parent.mkdir(parents=True)
        path.write_text(MIXED)
    with pytest.raises(ConfigError) as caught:
        with_option_files([f"qconfig={path}"])
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=needle.split(" (")[0][:30]):
        load_group_option("qconfig", str(path), setting="lab.qconfigs")
