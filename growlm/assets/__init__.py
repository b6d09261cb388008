"""Files shipped with the package so that every default works offline."""

from importlib import resources
from pathlib import Path

# Package data (installed with the wheel), read through importlib.resources; a plain folder on disk.
ASSETS_DIR = Path(str(resources.files(__name__)))
# The vendored 32k Llama-family tokenizer (Mistral v1 vocabulary, Apache-2.0; see its README).
DEFAULT_TOKENIZER_DIR = ASSETS_DIR / "tokenizer" / "llama-32k"
# Real text in SlimPajama's exact layout (train/validation/test chunk*/*.jsonl.zst).
DEFAULT_DATA_DIR = ASSETS_DIR / "slimpajama-tiny"
# The larger real-text sample (same layout, ~47 MB of text): growth studies, the demo, the small tokenizer's corpus.
SAMPLE_DATA_DIR = ASSETS_DIR / "slimpajama-sample"
# A 4,096-id byte-fallback BPE trained on SAMPLE_DATA_DIR's train split (scripts/train_tokenizer.py), for small models.
SMALL_TOKENIZER_DIR = ASSETS_DIR / "tokenizer" / "bpe-4k"
