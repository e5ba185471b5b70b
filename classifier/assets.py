"""Files the project ships beside its code, found from here, not from the cwd."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_PATH = ROOT / "models" / "inception_v3.onnx"
LABELS = ROOT / "models" / "imagenet_class_index.json"
EXAMPLE_PHOTOS = sorted((ROOT / "examples").glob("*.png"))
