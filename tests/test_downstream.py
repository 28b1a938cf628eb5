"""The README's detection and segmentation lines, as a user copies them: torchvision's own models start from our dense export."""

from pathlib import Path

import torch

from gatedssl.export.encoder import EvalTransform
from gatedssl.export.formats import write_torchvision
from gatedssl.models import create_backbone

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block() -> str:
    text = README.read_text()
    return text.split("Detection and segmentation start from", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_lines_build_a_detector_and_a_segmenter_from_our_weights_and_both_train(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ours = create_backbone("resnet18", stem="imagenet", width=64).eval()
    with torch.no_grad():
        ours.stem_conv.weight.mul_(1.5)  # weights no fresh torchvision model has
    write_torchvision(ours, EvalTransform.for_dataset("imagefolder"), tmp_path / "resnet18.pth")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(readme_block(), scope)  # in a fresh interpreter (below) `import gatedssl` alone must reach gatedssl.export
    detector, segmenter = scope["detector"], scope["segmenter"]
    for model in (detector.backbone.body, segmenter.backbone):
        assert torch.equal(model.conv1.weight, ours.stem_conv.weight)

    detector.train()
    detector.transform.min_size, detector.transform.max_size = (128,), 128  # CPU-sized images
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([1])} for _ in images]
    loss = sum(detector(images, targets).values())
    loss.backward()
    assert torch.isfinite(loss) and detector.backbone.body.layer1[0].conv1.weight.grad.abs().sum() > 0

    segmenter.train()
    x, mask = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    out = segmenter(x)["out"]
    assert out.shape == (2, 3, 64, 64)
    loss = torch.nn.functional.cross_entropy(out, mask)
    loss.backward()
    assert torch.isfinite(loss) and segmenter.backbone.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_a_bare_import_reaches_the_export_functions_the_readme_calls():
    import subprocess
    import sys

    code = "import gatedssl; print(gatedssl.export.torchvision_model.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "torchvision_model", done.stderr
