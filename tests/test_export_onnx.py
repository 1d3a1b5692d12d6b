"""``focusshot export --format onnx`` end to end, and its bad input (issue 34).

Every method's graph against ``predict`` is tests/test_contract_onnx.py; here: the command line,
a classifier whose backbone weights cannot be found, a missing onnx extra, and a failed check,
none of which leaves a file behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import focusshot
from focusshot.backbones.prefix import Prefix
from focusshot.classifier import Classifier
from focusshot.cli import main
from tests.methods.helpers import class_folders

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")

import focusshot.export_onnx as export_module  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A ProtoNet classifier on the tiny CLIP ViT, saved, and its images."""
    root = tmp_path_factory.mktemp("export")
    class_folders(root / "support", classes=2, per_class=3)
    clf = focusshot.fit(root / "support", backbone="tiny-clip-vit", method="protonet", cache_dir=root / "c")
    images = sorted(str(p) for p in (root / "support").rglob("*.png"))
    return clf.save(root / "clf.safetensors"), images


def test_export_command_writes_a_graph_onnxruntime_runs(
    fitted: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, images = fitted
    out = tmp_path / "clf.onnx"
    assert main(["export", str(path), "--format", "onnx", "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["clf.onnx"]
    clf = Classifier.load(path)
    x = clf.embed(images, prefix=Prefix.images()).features.numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"images": x})[0]
    torch.testing.assert_close(torch.from_numpy(probs), clf.predict_proba(images)[0], atol=1e-4, rtol=0)
    meta = export_module.read_metadata(out)
    assert meta["focusshot.format"] == export_module.ONNX_FORMAT
    assert meta["class_names"] == ["class_0", "class_1"]
    assert meta["preprocess"]["crop"] == clf.backbone.preprocess.crop == meta["input_size"][0]


def _moved_backbone(path: Path, out: Path) -> Path:
    """A copy of the classifier file whose backbone source names a checkpoint that does not exist."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["focusshot"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta["backbone_spec"]["source"] = str(out.parent / "gone" / "vit.safetensors")
    save_file(state, str(out), metadata={"focusshot": json.dumps(meta)})
    return out


def test_export_without_the_backbone_weights_says_so_and_writes_nothing(
    fitted: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    moved = _moved_backbone(fitted[0], tmp_path / "moved.safetensors")
    out = tmp_path / "out" / "clf.onnx"
    assert main(["export", str(moved), "--format", "onnx", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "backbone's weights cannot be found" in err and "gone" in err and "moved.safetensors" in err
    assert not out.exists() and not out.parent.exists()


def test_export_without_the_onnx_extra_says_how_to_install_it(
    fitted: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now fails
    with pytest.raises(ValueError, match=r"focusshot\[onnx\]"):
        export_module.export_onnx(fitted[0], tmp_path / "clf.onnx")
    assert not list(tmp_path.iterdir())


def test_a_failed_check_leaves_no_file(
    fitted: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "CHECK_TOLERANCE", -1.0)  # no graph can pass
    with pytest.raises(ValueError, match="differ from the classifier's"):
        export_module.export_onnx(fitted[0], tmp_path / "clf.onnx")
    assert not list(tmp_path.iterdir())


def test_the_deploy_page_snippet_prints_what_predict_prints(
    fitted: tuple[Path, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/howto/deploy.md's onnxruntime snippet (no focusshot in it) on a non-square photo."""
    import re

    from PIL import Image

    page = (Path(__file__).resolve().parents[1] / "docs" / "howto" / "deploy.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", page, re.S)
    assert snippet is not None and "focusshot" not in snippet.group(1)
    path, images = fitted
    export_module.export_onnx(path, tmp_path / "clf.onnx", check=False)
    Image.open(images[-1]).resize((53, 41)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet.group(1), "deploy.md", "exec"), {})
    label, prob = capsys.readouterr().out.split()
    want = Classifier.load(path).predict([tmp_path / "photo.jpg"])[0]
    assert label == want.label and abs(float(prob) - want.confidence) < 1e-4


@pytest.mark.parametrize("grid", [(4, 4), (7, 5), (14, 14)])
def test_the_traceable_foveal_bias_equals_foveal_bias(grid: tuple[int, int]) -> None:
    """FALIP's exported graph builds its bias with foveal_bias_graph: the same values as the eager
    foveal_bias, NaN rows, boxes on patch edges and the whole crop included."""
    from focusshot.attention.foveal import foveal_bias, foveal_bias_graph

    g = torch.Generator().manual_seed(0)
    lo = torch.rand(64, 2, generator=g) * 0.8
    boxes = torch.cat([lo, (lo + torch.rand(64, 2, generator=g) * 0.5).clamp(max=1.0)], 1)
    boxes[3] = float("nan")
    boxes[5] = torch.tensor([0.25, 0.25, 0.5, 0.5])
    boxes[6] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    n = grid[0] * grid[1] + 6  # two prefix tokens, four appended (VPT)
    for sigma, alpha in [(100.0, 0.2), (1.0, 1.0), (0.5, 0.3)]:
        want = foveal_bias(boxes, grid, 2, n, alpha, sigma)
        assert torch.equal(foveal_bias_graph(boxes, grid, 2, n, alpha, sigma), want)
