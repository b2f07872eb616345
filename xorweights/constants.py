"""Formats, magic numbers and environment switches, in one place."""

from __future__ import annotations

import os

#: Bytes XOR-ed per step. Memory per job is a small multiple of this, whatever the file size.
CHUNK_SIZE = 16 * 1024 * 1024

#: Chunks in flight per file: memory per file is about DEPTH * 2 * CHUNK_SIZE.
PIPELINE_DEPTH = 4
#: Chunks in flight across all files decoded at once; each file gets a share, at least 2.
PIPELINE_SLOTS = 8
#: Files processed at once by default: the cores, at most this many (each file already keeps
#: several cores busy; more files would only add memory).
DEFAULT_MAX_JOBS = 4


def default_jobs() -> int:
    """Files processed at once unless told: the cores, at most `DEFAULT_MAX_JOBS`."""
    return max(1, min(os.cpu_count() or 1, DEFAULT_MAX_JOBS))


#: With `drop_cache`, written bytes further back than this are waited for and dropped from the cache.
WRITEBACK_WINDOW = 4 * CHUNK_SIZE

#: Block size of the published legacy script (`xor_codec.py`); used only by the benchmark.
LEGACY_BLOCK_SIZE = 4096

#: gzip member header: ID1 ID2 CM=deflate. A legacy payload starting with these is gzip.
GZIP_MAGIC = b"\x1f\x8b\x08"

#: Without a published size, a gzip payload may inflate to at most twice its base plus this.
INFLATE_SLACK = 64 * 1024 * 1024

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
#: JSON files of a model folder larger than this are not parsed (the largest, a tokenizer.json, is a
#: few tens of MiB): a plausibility check leaves them unchecked, the legacy raw rule takes them as not JSON.
MAX_JSON_FILE_BYTES = 64 * 1024 * 1024
#: A file of any kind this large counts as weights where it would be stored unmasked.
RAW_FILE_LIMIT = 64 * 1024 * 1024
#: A file with a wrong digest or size is checked for converted line endings (CRLF/LF, as git's
#: autocrlf does) only up to this size: the text files of a model folder are smaller.
LINE_ENDING_CHECK_LIMIT = 64 * 1024 * 1024


#: Files the legacy script first copies raw, then XORs over that copy when the base holds one
#: (stock LLaMA has no such file, so the OA releases carry it raw); see `formats.oasst.raw_rule`.
LEGACY_RAW_FILES = ("added_tokens.json",)

#: Record of finished outputs in an output folder (hidden; see `outfolder/folder.py`).
STATE_FILE = ".xorweights-state.json"
STATE_FORMAT = "xorweights-state/1"
#: Append-only journal of the current (or a killed) run, one JSON object a line: an `intent`
#: before each output's rename, `done` after it, `drop` for a removed output. Folded into
#: `STATE_FILE` when the folder is opened and when the run ends, then removed.
STATE_JOURNAL = ".xorweights-state.journal"

#: Prefix of every temporary file written in a destination folder.
TEMP_PREFIX = ".xorweights-"
TEMP_SUFFIX = ".part"
#: Hidden folder inside an encode's `--out`: a native encode's finished payload files wait there until
#: every file is done (then they are renamed into place and `xorweights.json` is written last), and
#: the encode's records live there (`.payload-state/`), so that a killed encode resumes.
STAGING_DIR = TEMP_PREFIX + "staging"

#: The HTTP clients huggingface_hub uses (by version): their errors are the network's.
HTTP_MODULES = ("httpx", "httpx2", "httpcore", "httpcore2", "h11", "requests", "urllib3")

#: Checksum algorithms understood everywhere, with the hex length that identifies them.
ALGORITHMS = ("md5", "sha256")
HEX_LENGTH = {"md5": 32, "sha256": 64}

#: Checksum stages of a release, in the order a user meets them.
STAGES = ("meta_original", "hf_base", "decoded")

#: Checksum files, manifests and state files larger than this are refused unread.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

#: Schema tag of the JSON checksum manifests in `checksums/`.
MANIFEST_FORMAT = "xorweights-checksums/1"

ENV_VARS_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})

#: Silences all progress output (same effect as `--quiet`).
ENV_DISABLE_PROGRESS_BARS = "XORWEIGHTS_DISABLE_PROGRESS_BARS"
#: huggingface_hub's switch for its bars; a true value (as `is_true`) silences ours too.
ENV_HF_DISABLE_PROGRESS_BARS = "HF_HUB_DISABLE_PROGRESS_BARS"
#: tqdm's own switch; as tqdm reads it, any non-empty value silences every bar.
ENV_TQDM_DISABLE = "TQDM_DISABLE"
#: gzip decompressor: `auto` (python-isal when installed, else zlib), `isal` or `zlib`.
ENV_GZIP_BACKEND = "XORWEIGHTS_GZIP_BACKEND"
GZIP_BACKENDS = ("auto", "isal", "zlib")
#: Makes the CLI print full tracebacks.
ENV_DEBUG = "XORWEIGHTS_DEBUG"


def is_true(value: str | None) -> bool:
    """Whether an environment value means "on" (`1`, `yes`, `true`, `on`, any case)."""
    return value is not None and value.strip().upper() in ENV_VARS_TRUE_VALUES


def env_flag(name: str) -> bool:
    """Read a boolean environment switch now (not at import, so tests can set it)."""
    return is_true(os.environ.get(name))
