"""What the files of a model folder are, by name: weights (by container), text, tokenizers, and the
sizes beyond which a file counts as weights where it would be stored unmasked."""

from __future__ import annotations

#: Torch checkpoints (`torch.save`): a zip since torch 1.6, a bare pickle before.
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

#: Other containers that hold weights (GGUF, Flax, TF/Keras, ONNX, numpy, pickles).
OPAQUE_WEIGHT_SUFFIXES = (
    ".gguf",
    ".ggml",
    ".msgpack",
    ".h5",
    ".keras",
    ".onnx",
    ".npz",
    ".npy",
    ".pkl",
    ".pickle",
    ".joblib",
    ".tflite",
)

#: Every suffix of a file that holds model weights.
WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES, *OPAQUE_WEIGHT_SUFFIXES)

#: Small text files of a model folder that hold no weights (configs, cards, code, templates,
#: vocabularies); with `TEXT_NAMES` and `TOKENIZER_MODELS`, the files a payload may copy as they are.
_TEXT = "json txt md yaml yml py jinja toml cfg ini rst cff vocab tiktoken"

TEXT_SUFFIXES = tuple(f".{s}" for s in _TEXT.split())

#: Text files of a model folder named without a suffix (any case).
TEXT_NAMES = ("license", "licence", "notice", "copying", "readme", "authors", "citation")

#: Sentencepiece models (fnmatch, lower case): binary, but vocabularies, not weights.
TOKENIZER_MODELS = ("*tokenizer*.model", "spiece.model", "sentencepiece*.model", "*.spm")

#: A text file larger than this is not copied as it is where it would be stored unmasked: configs,
#: cards and code are far smaller, so a larger one is more likely a dump than a config.
TEXT_FILE_LIMIT = 16 * 1024 * 1024

#: Tokenizer files (names with `tokenizer`, `vocab` or `merges`, sentencepiece models) may be this
#: large: the largest, a 256k-token tokenizer.json, is about 33 MiB.
TOKENIZER_FILE_LIMIT = 64 * 1024 * 1024

#: A file of any kind this large counts as weights where it would be stored unmasked.
RAW_FILE_LIMIT = 64 * 1024 * 1024
