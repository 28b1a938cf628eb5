"""A pytest plugin that breaks training on purpose, to show that the learning tests catch it.

    GATEDSSL_MUTANT=no_step      PYTHONPATH=scripts pytest -p mutants tests/test_end_to_end.py -k learns
    GATEDSSL_MUTANT=frozen_gates PYTHONPATH=scripts pytest -p mutants tests/test_end_to_end.py -k learns

no_step: the optimizer never updates a weight (BN statistics still drift, as they would);
frozen_gates: the gates keep their initial weights while everything else trains.
Each learning test must fail under both.
"""

import os
import types

MUTANTS = ("no_step", "frozen_gates")


def pytest_configure(config):
    mutant = os.environ.get("GATEDSSL_MUTANT")
    if not mutant:
        return
    if mutant not in MUTANTS:
        raise SystemExit(f"GATEDSSL_MUTANT must be one of {MUTANTS}, got {mutant!r}")
    from gatedssl.training import trainer

    original = trainer.build_optimizer

    def broken(model, *args, **kwargs):
        if mutant == "frozen_gates":
            for name, p in model.named_parameters():
                if ".gate." in f".{name}":
                    p.requires_grad_(False)
        optimizer = original(model, *args, **kwargs)
        if mutant == "no_step":
            optimizer.step = types.MethodType(lambda self, *a, **k: None, optimizer)  # a bound method, as the scheduler expects
        return optimizer

    trainer.build_optimizer = broken
