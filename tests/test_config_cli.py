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
    problems = validate(PretrainConfig(method="moco", width="wide"))
    assert any("method" in p and "moco" in p for p in problems)
    assert any("width" in p and "expected a number" in p for p in problems)


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


@pytest.mark.parametrize(
    "text,needles",
    [
        ("1: 2\n", ["key(s) 1", "not setting names"]),
        ("null: 1\n", ["key(s) null", "not setting names"]),
        ("budget: 0.3\n[a]: 1\n", ["not valid YAML", "unhashable key", "line 2"]),
        ("blur_p: 0.1\n", ["blur_p", "2 numbers, got 1"]),
        ("epochs: ten\n", ["epochs", "expected an integer", "'ten'"]),
        ("crop_size: abc\ndataset: imagefolder\n", ["crop_size", "expected an integer"]),  # was a TypeError in resolve()
        ("optimizer: [lars]\n", ["optimizer", "expected text"]),  # was unhashable in resolve()
        ("budget: half\n", ["budget", "expected a number"]),  # was a format error naming the run folder
        ("mode: slimmable\nwidths: [a]\n", ["widths", "a list of numbers"]),
        ("seed: " + "9" * 40 + "\n", ["seed", "expected an integer"]),
        ("budget: " + "9" * 5000 + "\n", ["cannot be read", "digits"]),  # beyond Python's int-to-text limit
    ],
)
def test_yaml_of_the_wrong_shape_gets_one_clear_line(tmp_path, capsys, text, needles):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, _, err = run_cli(capsys, "pretrain", "--config", str(path), "--out", str(tmp_path / "run"))
    assert_one_clear_line(code, err, *needles)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("lr: 1e-1\n", {"lr": 0.1}),  # YAML 1.1 reads 1e-1 as text: the user means a number
        ("lr: '0.5'\nepochs: '3'\n", {"lr": 0.5, "epochs": 3}),
        ("mode: slimmable\nwidths: 0.5\n", {"widths": [1.0, 0.5]}),  # one number where a list is expected: a list of one
        ("blur_p: [0, 2e-1]\n", {"blur_p": [0.0, 0.2]}),
    ],
)
def test_yaml_values_are_read_as_meant(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    cfg = resolve(config_from_args(build_parser().parse_args(["pretrain", "--config", str(path)])))
    assert not validate(cfg)
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_a_config_that_is_not_utf8_or_is_a_folder_is_named(tmp_path, capsys):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("method: vicreg # réglages\n".encode("latin-1"))
    code, _, err = run_cli(capsys, "pretrain", "--config", str(latin))
    assert_one_clear_line(code, err, str(latin), "not UTF-8")
    code, _, err = run_cli(capsys, "pretrain", "--config", str(tmp_path))
    assert_one_clear_line(code, err, str(tmp_path), "is a folder")


@pytest.mark.parametrize(
    "name,value",
    [
        ("width", [8]),
        ("method", {"a": 1}),
        ("epochs", 10**400),
        ("lr", 10**400),
        ("lr", True),
        ("separate_bn", "yes"),
        ("blur_p", [0.1, None]),
        ("out", "a\x00b"),
        ("crop_size", 2.5),
    ],
    ids=[
        "list-for-int",
        "dict-for-str",
        "huge-int",
        "huge-int-for-float",
        "bool-for-float",
        "str-for-bool",
        "none-in-list",
        "nul",
        "float-for-int",
    ],
)
def test_resolve_and_validate_name_a_value_of_any_type(name, value):
    """resolve() looks defaults up by these values: a wrong type must be a line, never a TypeError there."""
    cfg = dataclasses.replace(PretrainConfig(), **{name: value})
    assert any(p.startswith(f"{name}: expected") for p in validate(cfg))
    with pytest.raises(UserError, match=f"^{name}: expected"):
        resolve(cfg)


def test_data_dir_without_a_dataset_is_an_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "pretrain", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert_one_clear_line(code, err, "data_dir", str(tmp_path), "--dataset imagefolder")
    assert not (tmp_path / "run").exists()


def test_widths_are_what_their_names_say():
    """0.3333333 is named width0.333333: a width is found by its name, so it must be that number (and 0.9999999 is dense)."""
    cfg = resolve(PretrainConfig(mode="slimmable", widths=[0.3333333, 0.33333333, 0.9999999]))
    assert cfg.widths == [1.0, 0.333333]


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--dataset", "imagefolder", "--crop-size", "1"], ["crop_size", "1 px", "--crop-size 7"]),
        (["--dataset", "imagefolder", "--crop-size", "8", "--stem-padding", "1"], ["crop_size", "--crop-size 9"]),
        (["--dataset", "imagefolder", "--crop-size", "32", "--stem", "imagenet"], ["crop_size", "--crop-size 33"]),
        (["--stem", "imagenet"], ["stem", "embedded's 32 px", "--stem cifar"]),
    ],
)
def test_crops_too_small_for_the_network_are_named(tmp_path, capsys, argv, needles):
    code, _, err = run_cli(capsys, "pretrain", *argv, "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    if "--dataset" not in argv:
        code, _, err = run_cli(capsys, "pretrain", *argv, "--out", str(tmp_path / "run"))
    assert_one_clear_line(code, err, *needles)


def test_the_smallest_crops_pass():
    from gatedssl.config import last_map_side

    for stem, padding, smallest in (("cifar", 2, 7), ("cifar", 1, 9), ("imagenet", 2, 33)):
        assert last_map_side(smallest, stem, padding) == 2 and last_map_side(smallest - 1, stem, padding) == 1


def test_one_image_per_rank_is_an_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli(capsys, "pretrain", "--batch-size", "2", "--out", str(tmp_path / "run"))
    assert_one_clear_line(code, err, "batch_size", "1 image per rank", "--batch-size 4")
    assert not validate(resolve(PretrainConfig(batch_size=4)))


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--out", "x" * 300], ["out", "300 bytes", "at most 255"]),  # was an OSError (File name too long) in the run-folder checks
        (["--width", "100000000"], ["width", "at most 4096"]),  # was a RuntimeError building the network to size its checkpoint
    ],
)
def test_values_beyond_what_a_run_can_hold_are_named(capsys, argv, needles):
    code, _, err = run_cli(capsys, "pretrain", *argv)
    assert_one_clear_line(code, err, *needles)


def test_pretrain_help_groups_every_flag(capsys):
    from dataclasses import fields

    from gatedssl.cli import build_parser
    from gatedssl.config import FLAG_GROUPS, PretrainConfig

    assert {f.metadata["group"] for f in fields(PretrainConfig)} == set(FLAG_GROUPS), "every group used, none unknown"
    pretrain = build_parser()._subparsers._group_actions[0].choices["pretrain"]
    titled = {g.title: {a.dest for a in g._group_actions} for g in pretrain._action_groups}
    for f in fields(PretrainConfig):
        assert f.name in titled[f"{f.metadata['group']} settings"], f.name


def test_choice_lists_are_defined_once_and_each_choice_runs():
    from dataclasses import fields

    import torch

    from gatedssl import names
    from gatedssl.config import PretrainConfig
    from gatedssl.data import pipelines, sources
    from gatedssl.evaluation.knn import knn_top1
    from gatedssl.methods import objective

    choices = {f.name: f.metadata["choices"] for f in fields(PretrainConfig)}
    assert choices["pairing"] is names.PAIRINGS is objective.PAIRINGS
    assert choices["data_pipeline"] is names.PIPELINES is pipelines.PIPELINES
    assert choices["storage"] is names.STORAGES is sources.STORAGES
    assert choices["knn_protocol"] is names.KNN_PROTOCOLS
    features, labels = torch.randn(20, 8), torch.arange(20) % 2
    for protocol in names.KNN_PROTOCOLS:
        assert 0 <= knn_top1(features, labels, features, labels, 2, protocol) <= 100
    with pytest.raises(ValueError):
        knn_top1(features, labels, features, labels, 2, "3nn")
