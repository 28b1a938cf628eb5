"""The compiled gather kernel of the real-skipping pass: equal to PyTorch's copy-then-multiply, built safely, optional."""

import shutil

import pytest
import torch
from test_skipping import close, make_masks, trained_looking

from gatedssl.export import gather_gemm, skipping
from gatedssl.export.skipping import SkippingResNet

COMPILER = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@pytest.fixture
def one_thread():
    """The kernel runs only where torch runs on one thread (the deployed batch-1 case)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process that has not built the kernel yet, with its cache in tmp_path."""
    monkeypatch.setattr(gather_gemm, "_library", False)
    monkeypatch.setenv("GATEDSSL_CACHE", str(tmp_path))
    return tmp_path


class Counted:
    """The compiled library, counting its calls: a test must know the kernel ran, not PyTorch's fallback."""

    def __init__(self, library):
        self.library, self.calls = library, 0

    def gather_dots(self, *args):
        self.calls += 1
        return self.library.gather_dots(*args)


@pytest.fixture
def counted(monkeypatch):
    assert gather_gemm.library() is not None, "a C compiler is here, so the kernel must build"
    spy = Counted(gather_gemm.library())
    monkeypatch.setattr(gather_gemm, "_library", spy)
    return spy


def reference(a, weight, rows, bias):
    return torch.addmm(bias[rows], a, weight[rows].t())


@pytest.mark.skipif(COMPILER is None, reason="no C compiler on this machine: the PyTorch path is tested instead")
def test_the_kernel_equals_copying_the_rows_and_multiplying(one_thread, counted):
    """Every tile edge: positions and kept rows that are not multiples of the 6 x 4 tile, depths that are not
    multiples of the 16-float vector (a width-8 conv: 72), one position, one row, repeated and unsorted rows."""
    g = torch.Generator().manual_seed(0)
    for positions, depth, channels, rows in [
        (16, 4608, 512, torch.randperm(512, generator=g)[:154].sort().values),
        (1, 72, 8, torch.tensor([3])),
        (13, 171, 19, torch.tensor([18, 0, 5, 5, 7, 2, 11])),  # unsorted, one repeated
        (49, 1152, 128, torch.arange(128)),
        (7, 16, 5, torch.tensor([4, 1])),
    ]:
        a, weight, bias = (torch.randn(*s, generator=g) for s in [(positions, depth), (channels, depth), (channels,)])
        got = gather_gemm.gathered_dots(a, weight, rows, bias)
        torch.testing.assert_close(got, reference(a, weight, rows, bias), rtol=1e-4, atol=1e-4 * depth**0.5)
        a_view = torch.randn(positions, depth + 3, generator=g)[:, 1 : depth + 1]  # a strided view is made contiguous
        torch.testing.assert_close(
            gather_gemm.gathered_dots(a_view, weight, rows, bias), reference(a_view, weight, rows, bias), rtol=1e-4, atol=1e-3
        )
    assert counted.calls == 10
    torch.set_num_threads(2)  # on more threads PyTorch's product (multi-threaded) runs instead
    gather_gemm.gathered_dots(a, weight, rows, bias)
    assert counted.calls == 10


@pytest.mark.skipif(COMPILER is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_the_skipping_pass_with_the_kernel_equals_the_masked_pass(monkeypatch, one_thread, counted, arch):
    """Every sliced convolution on the matrix-product path, at one thread, so that conv1's run through the kernel
    (counted): one-channel and random masks, batch 3 and 1, odd non-square maps."""
    monkeypatch.setattr(skipping, "SMALL_MAP", {"first": 10**9, "second": 10**9})
    net = trained_looking(arch, "cifar")
    x = torch.randn(3, 3, 33, 40, generator=torch.Generator().manual_seed(3))
    executor = SkippingResNet(net, "union")
    with torch.no_grad():
        for kind in ("one", "random"):
            masks = make_masks(net, len(x), kind)
            masked = net(x, gated=True, masks=masks).features
            for rows in (slice(0, 3), slice(1, 2)):
                got, _ = executor(x[rows], masks=[m[rows] for m in masks])
                assert close(got, masked[rows]), (kind, rows, (got - masked[rows]).abs().max().item())
    assert counted.calls >= 2 * 2 * len(net.blocks) - 4  # every block's conv1, bar those a mask closed entirely


def test_without_a_compiler_or_when_turned_off_the_same_product_runs_in_pytorch(monkeypatch, fresh, one_thread):
    a, weight, bias, rows = torch.randn(5, 40), torch.randn(9, 40), torch.randn(9), torch.tensor([8, 2, 3])
    monkeypatch.setenv("CC", str(fresh / "no-such-compiler"))
    assert gather_gemm.library() is None and not list(fresh.glob("*.so"))
    torch.testing.assert_close(gather_gemm.gathered_dots(a, weight, rows, bias), reference(a, weight, rows, bias))
    broken = fresh / "broken-cc"  # a compiler that dies halfway through writing its output
    broken.write_text('#!/bin/sh\nfor a; do [ "$prev" = -o ] && printf half > "$a"; prev=$a; done\nexit 1\n')
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setattr(gather_gemm, "_library", False)
    assert gather_gemm.library() is None and [p.name for p in fresh.iterdir()] == ["broken-cc"]  # nothing half-built left
    torch.testing.assert_close(gather_gemm.gathered_dots(a, weight, rows, bias), reference(a, weight, rows, bias))
    monkeypatch.setattr(gather_gemm, "_library", False)
    monkeypatch.delenv("CC")
    monkeypatch.setenv("GATEDSSL_KERNELS", "0")
    assert gather_gemm.library() is None


@pytest.mark.skipif(COMPILER is None, reason="no C compiler on this machine")
def test_a_torn_cached_library_is_built_again(monkeypatch, fresh, one_thread):
    """A library torn by an earlier process (a crash, a full disk) is rebuilt, not loaded and not left as is."""
    assert gather_gemm.library() is not None
    (built,) = fresh.glob("gather_gemm-*.so")
    assert [p.name for p in fresh.iterdir()] == [built.name]  # the build's scratch folder is gone
    other = fresh / "other"  # another cache: this process has the first one loaded, and rewriting it under a
    other.mkdir()  # loaded library is what the build's rename exists to avoid
    (other / built.name).write_bytes(built.read_bytes()[:100])
    monkeypatch.setenv("GATEDSSL_CACHE", str(other))
    monkeypatch.setattr(gather_gemm, "_library", False)
    assert gather_gemm.library() is not None and (other / built.name).stat().st_size == built.stat().st_size
    a, weight, bias, rows = torch.randn(5, 40), torch.randn(9, 40), torch.randn(9), torch.tensor([8, 2, 3])
    torch.testing.assert_close(gather_gemm.gathered_dots(a, weight, rows, bias), reference(a, weight, rows, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(COMPILER is None, reason="no C compiler on this machine")
def test_cc_may_name_a_compiler_with_flags(monkeypatch, fresh):
    monkeypatch.setenv("CC", f"{COMPILER} -O2")
    assert gather_gemm.library() is not None and len(list(fresh.glob("gather_gemm-*.so"))) == 1
