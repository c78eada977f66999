"""`trainer` subcommands: `--stage=NAME` is the same command, argparse owns each stage's flags."""

import pytest

from trainer import cli

DATA = ["--data", "d"]
COMMANDS = {  # a valid command line of each stage, without the stage
    "search": [*DATA, "--out", "o", "--train.lr=0.1", "--seed=3"],
    "retrain": [*DATA, "--architecture", "a.json", "--mode", "hard", "--init", "search", "--out", "o"],
    "train": [*DATA, "--model", "lr", "--calibrate", "none", "--out", "o"],
    "tune": [*DATA, "--model", "lr", "--grid", "g.yaml", "--max_trials", "2", "--epochs", "1", "--out", "o"],
    "evaluate": [*DATA, "--run_dir", "r", "--split", "valid", "--output", "e.json"],
    "predict": [*DATA, "--run_dir", "r", "--input", "raw.tsv", "--on_bad_row", "nan", "--output", "p.tsv"],
}


@pytest.mark.parametrize("stage", COMMANDS)
def test_stage_flag_is_the_subcommand(stage):
    rest = COMMANDS[stage]
    expected = cli._parser().parse_known_args([stage, *rest])
    assert expected[0].stage == stage
    assert cli._parser().parse_known_args([f"--stage={stage}", *rest]) == expected
    assert cli._parser().parse_known_args([*rest[:2], "--stage", stage, *rest[2:]]) == expected


@pytest.mark.parametrize(
    "stage, foreign",
    [
        ("search", ["--model", "lr"]),
        ("search", ["--calibrate", "none"]),
        ("search", ["--calibrate=none"]),  # a flag of another stage, not a config override
        ("search", ["--architecture", "a.json"]),
        ("retrain", ["--model", "lr"]),
        ("train", ["--architecture_file", "a.json"]),  # no such flag (train takes --init=run:PATH: test_warmstart)
        ("train", ["--grid", "g.yaml"]),
        ("train", ["--input", "raw.tsv"]),
        ("tune", ["--mode", "hard"]),
        ("evaluate", ["--out", "o"]),  # not an abbreviation of --output
        ("evaluate", ["--input", "raw.tsv"]),
        ("evaluate", ["--train.lr=0.1"]),  # scoring takes no config overrides
        ("predict", ["--resume"]),
        ("predict", ["--strategy", "default"]),
    ],
)
def test_a_flag_of_another_stage_is_a_usage_error(stage, foreign, capsys):
    for argv in ([stage, *COMMANDS[stage], *foreign], [f"--stage={stage}", *foreign, *COMMANDS[stage]]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        assert f"usage: trainer {stage}" in err
        assert f"trainer {stage}: error: unrecognized arguments: {' '.join(foreign)}" in err


def test_required_flags_and_unknown_stage_are_usage_errors(capsys):
    for argv, message in [(["predict", *DATA, "--output", "p.tsv"], "required: --run_dir"),
                          (["--stage=search", *DATA], "required: --out"),
                          (["--stage=serch", *DATA], "invalid choice: 'serch'"),
                          ([], "required: STAGE")]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_help_lists_the_stages_and_each_stage_its_own_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(f"\n    {stage} " in text for stage in COMMANDS) and "--stage=NAME" in text
    with pytest.raises(SystemExit):
        cli.main(["--stage=predict", "--help"])
    text = capsys.readouterr().out
    assert "usage: trainer predict" in text and "--keep_columns" in text and "--out " not in text


@pytest.mark.parametrize("where", ["global", "after_stage", "with_stage_flag"])
def test_verbose_is_accepted_before_and_after_the_stage(where):
    argv = {"global": ["--verbose", "search", *COMMANDS["search"]],
            "after_stage": ["search", *COMMANDS["search"], "--verbose"],
            "with_stage_flag": ["--verbose", "--stage=search", *COMMANDS["search"]]}[where]
    args, extra = cli._parser().parse_known_args(argv)
    assert args.verbose is True and args.stage == "search" and extra == ["--train.lr=0.1", "--seed=3"]
    assert not hasattr(cli._parser().parse_known_args(["search", *COMMANDS["search"]])[0], "verbose")
