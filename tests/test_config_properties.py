"""Property tests of the settings layer: any YAML file and any flag value, read the way `gatedssl pretrain` reads
them (parser, --config, preflight's checks), either passes or ends in `error:` lines with exit code 2; no other
exception (which the crash net would report as a bug). Training itself is replaced by a stub: nothing is trained."""

from __future__ import annotations

import dataclasses
import os
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatedssl import cli
from gatedssl.config import PretrainConfig
from gatedssl.errors import RunStopped

NAMES = [f.name for f in dataclasses.fields(PretrainConfig)]
REACHED = 99  # the stub's exit code: the settings passed every check and training would start

numbers_as_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers().map(str),
    st.sampled_from(["1e-1", "1e400", "-0", ".5", "0x10", "1_000", "nan", "inf", "9" * 5000]),
)
scalars = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    numbers_as_text,
    st.booleans(),
    st.none(),
    st.sampled_from(["cifar10", "imagefolder", "slimmable", "posthoc", "cuda", "cpu", ".", "embedded", "stream", "loader"]),
    st.sampled_from(["\ud800", "a\x00b", "x" * 300, "a/" * 2100]),  # a lone surrogate, NUL, a name and a path too long
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8
)
real_keys = st.sampled_from(NAMES) | st.sampled_from(NAMES).map(lambda n: n.replace("_", "-"))
any_keys = real_keys | st.text(max_size=8) | st.integers() | st.none() | st.booleans() | st.floats(allow_nan=False)
mappings = st.dictionaries(real_keys, values, max_size=6) | st.dictionaries(any_keys, values, max_size=4)


@pytest.fixture(scope="module")
def sandbox():
    """A working folder (the default run folders are relative to it) and a stub for training, outside torchrun."""
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("WORLD_SIZE", raising=False)
        mp.delenv("RANK", raising=False)
        mp.setattr(tempfile, "tempdir", folder)  # a crash log, should one be written, stays here

        def reached(*_args, **_kwargs):
            raise RunStopped("", REACHED)

        import gatedssl.training.trainer as trainer

        mp.setattr(trainer, "pretrain", reached)
        yield folder


def _gatedssl(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(["pretrain", "--quiet", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "hit a bug" not in err, err
    if code == 2:
        assert lines and all(line.startswith("error: ") for line in lines), err
    else:
        assert code == REACHED, err
    return code, lines


PROPERTY = settings(
    max_examples=int(os.environ.get("GATEDSSL_EXAMPLES", 200)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(mapping=mappings)
def test_any_yaml_mapping_passes_or_gets_error_lines(sandbox, capsys, mapping):
    path = os.path.join(sandbox, "c.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(mapping, fh)
    _gatedssl(capsys, "--config", path)


@PROPERTY
@given(document=st.one_of(values, st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
def test_any_yaml_document_passes_or_gets_error_lines(sandbox, capsys, document):
    """Not a mapping at all, or not YAML at all."""
    path = os.path.join(sandbox, "d.yaml")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:  # a lone surrogate: bytes that are not UTF-8
        fh.write(document if isinstance(document, str) else yaml.safe_dump(document))
    _gatedssl(capsys, "--config", path)


def _flags() -> list[str]:
    sub = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "pretrain")[1]
    return sorted(s for action in sub._actions for s in action.option_strings if s.startswith("--") and s not in ("--help",))


flag_values = st.one_of(
    st.text(max_size=10),
    numbers_as_text,
    st.integers().map(str),
    st.sampled_from(["0", "-1", "1", "2", "0.3333333", "1e308", "1e-320", "true", "auto", "cuda", ".", ""]),
)


@PROPERTY
@given(flag=st.sampled_from(_flags()), value=flag_values, then=st.sampled_from([(), ("--dataset", "imagefolder"), ("--mode", "slimmable")]))
def test_any_flag_value_passes_or_gets_error_lines(sandbox, capsys, flag, value, then):
    value = value.replace("\x00", "")  # a command line cannot carry NUL
    _gatedssl(capsys, f"{flag}={value}", *then)


def test_the_properties_reach_training_too(sandbox, capsys):
    """The stub is reached by settings that pass, so a property that only ever saw errors would be noticed."""
    path = os.path.join(sandbox, "ok.yaml")
    with open(path, "w") as fh:
        fh.write("lr: 1e-1\nwidths: 0.5\nmode: slimmable\n")
    assert _gatedssl(capsys, "--config", path)[0] == REACHED
    assert _gatedssl(capsys, "--budget=0.3")[0] == REACHED


odd_values = values | st.tuples(scalars) | st.frozensets(st.integers(), max_size=3) | st.builds(object) | st.just(float("nan"))


@PROPERTY
@given(changes=st.dictionaries(st.sampled_from(NAMES), odd_values, max_size=4))
def test_validate_and_resolve_take_any_value(changes):
    """The library's own entry points, without the CLI: validate() answers lines, resolve() a config or a UserError."""
    from gatedssl.config import resolve, validate
    from gatedssl.errors import UserError

    cfg = dataclasses.replace(PretrainConfig(), **changes)
    problems = validate(cfg)
    assert isinstance(problems, list) and all(isinstance(p, str) and "\n" not in p for p in problems)
    try:
        resolved = resolve(cfg)
    except UserError as e:
        assert str(e).strip()
    else:
        assert all(isinstance(p, str) for p in validate(resolved))
