import dataclasses

import pytest

from gatedssl.cli import build_parser, config_from_args, main
from gatedssl.config import PretrainConfig, load_yaml, resolve, validate
from gatedssl.errors import UserError


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_clear_line(code, err, *needles):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def test_recipe_defaults_depend_on_dataset():
    demo = resolve(PretrainConfig())
    assert (demo.width, demo.epochs, demo.batch_size, demo.stem) == (8, 16, 128, "cifar")
    paper = resolve(PretrainConfig(dataset="cifar10"))
    assert (paper.width, paper.epochs, paper.batch_size, paper.lr, paper.weight_decay, paper.warmup_epochs) == (
        64,
        500,
        512,
        0.3,
        1e-4,
        None,
    )  # None: warmup_steps' rule
    assert resolve(PretrainConfig(dataset="imagefolder")).stem == "imagenet"
    assert resolve(PretrainConfig(width=32)).width == 32, "explicit settings win over the recipe"


def test_validate_reports_every_problem_at_once():
    cfg = resolve(dataclasses.replace(PretrainConfig(), budget=1.5, epochs=0, tau=-1.0, momentum=1.0))
    problems = validate(cfg)
    assert len(problems) == 4
    assert any(p.startswith("budget:") for p in problems)
    assert any(p.startswith("epochs:") for p in problems)


def test_validate_catches_wrong_types_and_choices():
    problems = validate(resolve(PretrainConfig(method="moco", width="wide")))
    assert any("method" in p and "moco" in p for p in problems)
    assert any("width" in p and "expected int" in p for p in problems)


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("budget: 0.3\nepochs: 7\nmethod: simsiam\n")
    args = build_parser().parse_args(["pretrain", "--config", str(path), "--epochs", "9"])
    cfg = config_from_args(args)
    assert (cfg.budget, cfg.epochs, cfg.method) == (0.3, 9, "simsiam")


def test_yaml_unknown_key_is_an_error(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("budgett: 0.3\n")
    with pytest.raises(UserError, match="unknown key"):
        load_yaml(path)
    code, _, err = run_cli(capsys, "pretrain", "--config", str(path))
    assert_one_clear_line(code, err, "budgett")


def test_help_documents_every_setting(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(PretrainConfig):
        assert "--" + f.name.replace("_", "-") in out


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["pretrain", "--dataset", "mnist"], ["dataset", "mnist"]),
        (["pretrain", "--method", "moco"], ["method", "moco"]),
        (["pretrain", "--budget", "1.5"], ["budget", "(0, 1]"]),
        (["pretrain", "--budget", "0"], ["budget"]),
        (["pretrain", "--budget", "half"], ["budget", "half"]),
        (["pretrain", "--dataset", "cifar10", "--data-dir", "/nonexistent/folder"], ["/nonexistent/folder"]),
        (["pretrain", "--dataset", "imagefolder"], ["--data-dir"]),
        (["pretrain", "--arch", "vgg16"], ["arch", "vgg16"]),
        (["pretrain", "--dataset", "imagefolder", "--data-dir", ".", "--crop-size", "0"], ["crop_size", "positive"]),
        (["pretrain", "--recipe", "paper"], ["recipe", "paper"]),
        (["pretrain", "--vicreg-weights", "25", "25"], ["--vicreg-weights", "3"]),
        (["eval", "--checkpoint", "/nonexistent/last.pt"], ["/nonexistent/last.pt", "not found"]),
    ],
)
def test_bad_input_gets_one_clear_line(capsys, argv, needles):
    code, _, err = run_cli(capsys, *argv)
    assert_one_clear_line(code, err, *needles)


def test_corrupt_checkpoint_is_named(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(bad))
    assert_one_clear_line(code, err, str(bad), "cannot be read")


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--budget-weight", "nan"), ("--weight-decay", "-inf")])
def test_non_finite_settings_are_rejected_up_front(tmp_path, capsys, flag, value):
    code, _, err = run_cli(capsys, "pretrain", "--out", str(tmp_path / "run"), f"{flag}={value}", "--device", "cpu")
    assert_one_clear_line(code, err, flag.lstrip("-").replace("-", "_"), "finite")
    assert not (tmp_path / "run").exists()


def test_sweep_rejects_a_repeated_budget_before_training(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sweep", "--budgets", "0.5", "0.3", "0.5", "--out", str(tmp_path / "sw"), "--device", "cpu")
    assert_one_clear_line(code, err, "--budgets", "0.5", "more than once")
    assert not (tmp_path / "sw").exists()


def test_shipped_configs_load_by_name(tmp_path, capsys):
    from gatedssl.config import shipped_configs

    assert shipped_configs() == ["cifar10", "cifar100", "imagenet100", "stl10"]
    for name in shipped_configs():
        values = load_yaml(name)
        assert "data_dir" not in values and values["epochs"] == 500  # no machine's folder baked in
        assert not validate(resolve(PretrainConfig(**values, data_dir=str(tmp_path))))
    args = build_parser().parse_args(["pretrain", "--config", "cifar10", "--budget", "0.3"])
    cfg = config_from_args(args)
    assert (cfg.dataset, cfg.width, cfg.budget) == ("cifar10", 64, 0.3)
    code, _, err = run_cli(capsys, "pretrain", "--config", "cifar11")
    assert_one_clear_line(code, err, "cifar11", "cifar10, cifar100")
