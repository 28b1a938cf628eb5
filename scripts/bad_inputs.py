"""Try every kind of bad input on the real CLI and print what a user sees, as a Markdown table.

    python scripts/bad_inputs.py            # about 2 minutes on 2 CPU cores

Each case runs `python -m gatedssl ...` in a fresh process; the table shows the exit code and
the messages printed (stderr), and flags any Python traceback (there should be none).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

# The two streamed-folder cases use width 16, chosen when width 8 at 224 px crashed in oneDNN's strided 1x1
# weight gradient; gatedssl now works around that crash (models/onednn.py, BENCHMARKS.md "Known crash").
TINY = ["--width", "8", "--proj-dim", "64", "--epochs", "1", "--batch-size", "50", "--limit-per-class", "20", "--device", "cpu", "--quiet"]


class Payload:
    """Unpickling this would run a command: gatedssl must refuse the file."""

    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def run(args: list[str], cwd: Path, env: dict | None = None) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "gatedssl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


def folders(root: Path) -> dict[str, Path]:
    def image(path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (200, 20, 20)).save(path)

    out = {"empty": root / "empty", "noval": root / "noval", "mismatch": root / "mismatch", "broken": root / "broken"}
    out["empty"].mkdir()
    image(out["noval"] / "train/cat/a.png")
    image(out["mismatch"] / "train/cat/a.png")
    image(out["mismatch"] / "val/dog/a.png")
    for split, count in (("train", 30), ("val", 5)):
        for cls in ("cat", "dog"):
            for i in range(count):
                image(out["broken"] / f"{split}/{cls}/{i}.png")
    (out["broken"] / "train/cat/00broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "unknown.yaml").write_text("budgett: 0.3\n")
    (root / "list.yaml").write_text("- 0.3\n- 0.5\n")
    (root / "broken.yaml").write_text("budget: [0.3\n")
    (root / "corrupt.pt").write_bytes(b"this is not a checkpoint")
    # a decompression bomb (a PNG header announcing 20,000 x 20,000 pixels over 8 x 8 of data) and an animated GIF
    out["bomb"] = root / "bomb"
    for split, count in (("train", 30), ("val", 5)):
        for cls in ("cat", "dog"):
            for i in range(count):
                image(out["bomb"] / f"{split}/{cls}/{i}.png")
    bomb_png(out["bomb"] / "train/cat/0bomb.png")
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((0, 200, 0), (200, 0, 0))]
    frames[0].save(out["bomb"] / "train/dog/0anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    # class folders whose names matplotlib would read as mathtext
    out["odd_names"] = root / "odd_names"
    for split, count in (("train", 20), ("val", 5)):
        for cls in ("$\\bad$", "x_%^"):
            for i in range(count):
                image(out["odd_names"] / f"{split}/{cls}/{i}.png")
    (root / "int_key.yaml").write_text("1: 2\n")
    (root / "null_key.yaml").write_text("null: 1\n")
    (root / "list_key.yaml").write_text("[a]: 1\n")
    (root / "scalar_list.yaml").write_text("blur_p: 0.1\n")
    (root / "wrong_type.yaml").write_text("dataset: imagefolder\ncrop_size: abc\n")
    (root / "latin1.yaml").write_bytes("method: vicreg # réglages\n".encode("latin-1"))
    return out


def bomb_png(path: Path, side: int = 20_000) -> None:
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("1", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", side, side)  # IHDR's width and height, then its CRC
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        f = folders(root)
        done = root / "done"
        code, err = run(["pretrain", "--out", str(done), *TINY], root)
        assert code == 0, err
        import torch

        state = torch.load(done / "checkpoints/last.pt", weights_only=True)
        state["config"]["arch"] = "resnet34"
        torch.save(state, root / "other_arch.pt")
        torch.save({"format_version": 1, "config": {}, "model": Payload()}, root / "evil.pt")
        last = str(done / "checkpoints/last.pt")
        notes = root / "notes.onnx"
        notes.write_text("a user's notes, named like a model")
        odd = root / "odd-run"
        odd_args = ["--dataset", "imagefolder", "--data-dir", str(f["odd_names"]), "--crop-size", "32", *TINY[:-3], "--batch-size", "20"]
        code, err = run(["pretrain", *odd_args, "--quiet", "--out", str(odd)], root)
        assert code == 0, err
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)"])  # a live run's stand-in
        held = root / "held"
        held.mkdir()
        lease = {"pid": holder.pid, "host": socket.gethostname(), "started": time.time(), "heartbeat": time.time()}
        (held / ".lock").write_text(json.dumps(lease))
        cases = [
            ("run folder held by a live run", ["pretrain", "--out", str(held), *TINY]),
            ("unknown dataset", ["pretrain", "--dataset", "mnist"]),
            ("unknown method", ["pretrain", "--method", "moco"]),
            ("budget above 1", ["pretrain", "--budget", "1.5"]),
            ("budget 0", ["pretrain", "--budget", "0"]),
            ("budget not a number", ["pretrain", "--budget", "half"]),
            ("negative epochs", ["pretrain", "--epochs", "-3"]),
            ("batch of one image", ["pretrain", "--batch-size", "1"]),
            ("width 0", ["pretrain", "--width", "0"]),
            ("several problems at once", ["pretrain", "--budget", "2", "--epochs", "0", "--lr", "-1"]),
            ("misspelt flag", ["pretrain", "--bugdet", "0.3"]),
            ("unknown command", ["train"]),
            ("unknown device", ["pretrain", "--device", "tpu"]),
            ("CUDA asked, none present", ["pretrain", "--device", "cuda"]),
            ("data folder missing", ["pretrain", "--dataset", "cifar10", "--data-dir", str(root / "nowhere")]),
            ("imagefolder without --data-dir", ["pretrain", "--dataset", "imagefolder"]),
            (
                "CIFAR-10 folder empty (offline)",
                ["pretrain", "--dataset", "cifar10", "--data-dir", str(f["empty"]), *TINY[:-1], "--out", str(root / "r1")],
            ),
            (
                "image folder without val/",
                ["pretrain", "--dataset", "imagefolder", "--data-dir", str(f["noval"]), "--out", str(root / "r2")],
            ),
            (
                "train/val classes differ",
                ["pretrain", "--dataset", "imagefolder", "--data-dir", str(f["mismatch"]), "--out", str(root / "r3")],
            ),
            ("YAML key that does not exist", ["pretrain", "--config", str(root / "unknown.yaml")]),
            ("YAML that is a list", ["pretrain", "--config", str(root / "list.yaml")]),
            ("YAML syntax error", ["pretrain", "--config", str(root / "broken.yaml")]),
            ("config file missing", ["pretrain", "--config", str(root / "nope.yaml")]),
            ("output folder not writable", ["pretrain", "--out", "/proc/gatedssl-run"]),
            ("run folder already finished", ["pretrain", "--out", str(done), *TINY]),
            ("--resume without a checkpoint", ["pretrain", "--out", str(root / "fresh"), "--resume"]),
            ("--resume with other settings", ["pretrain", "--out", str(done), *TINY, "--arch", "resnet34", "--resume"]),
            (
                "batch larger than the data",
                ["pretrain", "--out", str(root / "r4"), *TINY[:-3], "--limit-per-class", "2", "--batch-size", "64", "--quiet"],
            ),
            ("--storage stream on the embedded set", ["pretrain", "--storage", "stream"]),
            ("unknown --storage", ["pretrain", "--storage", "disk"]),
            ("unknown --precision", ["pretrain", "--precision", "fp8"]),
            ("negative --data-workers", ["pretrain", "--data-workers", "-1"]),
            (
                "--storage stream of torchvision's files",
                ["pretrain", "--dataset", "cifar10", "--data-dir", str(f["empty"]), "--storage", "stream", "--out", str(root / "r5")],
            ),
            (
                "streamed folder with an unreadable file",
                [
                    "pretrain",
                    "--dataset",
                    "imagefolder",
                    "--data-dir",
                    str(f["broken"]),
                    "--storage",
                    "stream",
                    *TINY[:-3],
                    "--width",
                    "16",
                    "--batch-size",
                    "20",
                    "--quiet",
                    "--out",
                    str(root / "r6"),
                ],
            ),
            (
                "the same with --strict",
                [
                    "pretrain",
                    "--dataset",
                    "imagefolder",
                    "--data-dir",
                    str(f["broken"]),
                    "--storage",
                    "stream",
                    "--strict",
                    *TINY[:-3],
                    "--width",
                    "16",
                    "--batch-size",
                    "20",
                    "--quiet",
                    "--out",
                    str(root / "r7"),
                ],
            ),
            ("eval: checkpoint missing", ["eval", "--checkpoint", str(root / "none.pt")]),
            ("eval: not a checkpoint", ["eval", "--checkpoint", str(root / "corrupt.pt")]),
            ("eval: weights of another architecture", ["eval", "--checkpoint", str(root / "other_arch.pt"), "--out", str(root / "x.json")]),
            ("eval: a checkpoint that would run code", ["eval", "--checkpoint", str(root / "evil.pt")]),
            ("export: checkpoint missing", ["export", "--checkpoint", str(root / "none.pt"), "--out", str(root / "e.pt")]),
            ("export: not a checkpoint", ["export", "--checkpoint", str(root / "corrupt.pt"), "--out", str(root / "e.pt")]),
            (
                "export: keep rate above 1",
                ["export", "--checkpoint", last, "--subnet", "static", "--keep-rate", "1.5", "--out", str(root / "e.pt")],
            ),
            (
                "export: MACs ratio out of reach",
                ["export", "--checkpoint", last, "--subnet", "static", "--macs-ratio", "0.01", "--out", str(root / "e.pt")],
            ),
            (
                "export: static as torchvision",
                ["export", "--checkpoint", last, "--subnet", "static", "--format", "torchvision", "--out", str(root / "e.pt")],
            ),
            ("export: torchvision at width 8", ["export", "--checkpoint", last, "--format", "torchvision", "--out", str(root / "e.pt")]),
            ("export: unknown format", ["export", "--checkpoint", last, "--format", "tflite", "--out", str(root / "e.pt")]),
            ("export: output folder not writable", ["export", "--checkpoint", last, "--out", "/proc/gatedssl/e.pt"]),
            ("export: a width of a dual run", ["export", "--checkpoint", last, "--subnet", "width0.5", "--out", str(root / "e.pt")]),
            ("export: a width above 1", ["export", "--checkpoint", last, "--subnet", "width1.5", "--out", str(root / "e.pt")]),
            (
                "export: a channel multiple for the dense network",
                ["export", "--checkpoint", last, "--channel-multiple", "16", "--out", str(root / "e.pt")],
            ),
            ("export: a pt file named .onnx", ["export", "--checkpoint", last, "--out", str(root / "e.onnx")]),
            (
                "export: over a user's notes named .onnx",
                ["export", "--checkpoint", last, "--format", "onnx", "--out", str(notes)],
            ),
            ("--resume with a value other than auto", ["pretrain", "--out", str(done), "--resume", "yes"]),
            ("negative --checkpoint-minutes", ["pretrain", "--checkpoint-minutes", "-5"]),
            ("slimmable: a width outside (0, 1]", ["pretrain", "--mode", "slimmable", "--widths", "0", "0.5"]),
            ("slimmable: no widths", ["pretrain", "--mode", "slimmable", "--widths"]),
            ("widths without --mode slimmable", ["pretrain", "--widths", "0.5"]),
            ("posthoc without --init-from", ["pretrain", "--mode", "posthoc"]),
            ("posthoc: --init-from missing", ["pretrain", "--mode", "posthoc", "--init-from", str(root / "no-run")]),
            (
                "posthoc: --init-from another width",
                ["pretrain", "--mode", "posthoc", "--init-from", str(done), "--width", "16", *TINY[2:], "--out", str(root / "r8")],
            ),
            (
                "posthoc: --init-from a file that is no state dict",
                ["pretrain", "--mode", "posthoc", "--init-from", str(root / "corrupt.pt"), *TINY, "--out", str(root / "r9")],
            ),
            ("--sync-bn on the CPU", ["pretrain", "--sync-bn", "--device", "cpu"]),
            ("--data-pipeline loader under torchrun (what rank 0 prints)", ["pretrain", "--data-pipeline", "loader"], {"WORLD_SIZE": "2"}),
            ("batch not dividing by torchrun's ranks (what rank 0 prints)", ["pretrain", "--batch-size", "100"], {"WORLD_SIZE": "3"}),
            (
                "sweep under torchrun (what rank 0 prints)",
                ["sweep", "--budgets", "0.3", "--out", str(root / "sw2")],
                {"WORLD_SIZE": "2", "RANK": "0"},
            ),
            (
                "sweep: posthoc without the baseline",
                ["sweep", "--modes", "posthoc", "--budgets", "0.3", "--no-baseline", "--out", str(root / "sw")],
            ),
        ]
        bomb = ["pretrain", "--dataset", "imagefolder", "--data-dir", str(f["bomb"]), "--crop-size", "32", *TINY[:-3], "--batch-size", "20"]
        cases += [
            ("YAML key that is a number", ["pretrain", "--config", str(root / "int_key.yaml")]),
            ("YAML key null", ["pretrain", "--config", str(root / "null_key.yaml")]),
            ("YAML key that is a list", ["pretrain", "--config", str(root / "list_key.yaml")]),
            ("YAML number where a pair is expected", ["pretrain", "--config", str(root / "scalar_list.yaml")]),
            ("YAML value of the wrong type", ["pretrain", "--config", str(root / "wrong_type.yaml")]),
            ("config file not UTF-8", ["pretrain", "--config", str(root / "latin1.yaml")]),
            ("config file is a folder", ["pretrain", "--config", str(root)]),
            ("--data-dir without --dataset", ["pretrain", "--data-dir", str(f["broken"])]),
            ("decompression bomb and animated GIF (held)", [*bomb, "--out", str(root / "r10")]),
            ("the same, streamed", [*bomb, "--storage", "stream", "--out", str(root / "r11")]),
            ("the same with --strict", [*bomb, "--strict", "--out", str(root / "r12")]),
            (
                "slimmable: --widths 0.3333333 (trains)",
                ["pretrain", "--mode", "slimmable", "--widths", "0.3333333", *TINY, "--out", str(root / "r13")],
            ),
            ("--crop-size 1", ["pretrain", "--dataset", "imagefolder", "--data-dir", str(f["broken"]), "--crop-size", "1"]),
            ("--stem imagenet on 32 px images", ["pretrain", "--stem", "imagenet"]),
            ("one image per rank (what rank 0 prints)", ["pretrain", "--batch-size", "2"], {"WORLD_SIZE": "2"}),
            ("--width 100000000", ["pretrain", "--width", "100000000"]),
            ("--out name over 255 bytes", ["pretrain", "--out", "x" * 300]),
            ("report: class names with $\\bad$, _ % ^ (writes it)", ["report", str(odd), "--out", str(root / "odd-report")]),
        ]
        print("| # | bad input | exit | what the user sees (stderr) |")
        print("|---|---|---|---|")
        for i, (name, args, *env) in enumerate(cases, 1):
            code, err = run(args, root, *env)
            said = [line for line in err.strip().splitlines() if line.startswith(("error", "warning"))] or err.strip().splitlines()[-1:]
            shown = " / ".join(said).replace(str(root), "TMP").replace("|", "\\|")
            flag = " **TRACEBACK**" if "Traceback" in err else ""
            print(f"| {i} | {name} | {code} | {shown[:400]}{flag} |")
        holder.kill()


if __name__ == "__main__":
    main()
