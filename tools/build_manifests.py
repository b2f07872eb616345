"""Build `checksums/<release>.json` from the published lists in `shared/reference/checksums/`.

Usage: python tools/build_manifests.py [REFERENCE_DIR]   (default: ../shared/reference/checksums)

The reference lists are transcriptions of model cards with their sources; this script maps them
onto the manifest schema (`xorweights-checksums/1`) and adds what each release needs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PINNED = (
    "the byte-exact output of transformers@d04ec99bec8a0b432fc03ed60cea9a1a20ebaf3c "
    "convert_llama_weights_to_hf.py --model_size 30B with torch 1.13.1, accelerate 0.18.0, "
    "sentencepiece 0.1.98, protobuf 3.20.1, Python 3.10"
)
_META_30B = "Meta's original LLaMA-30B: consolidated.00-03.pth, params.json, tokenizer.model"

RELEASES = {
    "oasst-sft-6-llama-30b-xor.json": {
        "release": "oasst-sft-6-llama-30b",
        "description": "OpenAssistant LLaMA-30B SFT 6 (epoch 7), legacy XOR payload, files two levels down",
        "needs": {"meta_original": _META_30B, "hf_base": _PINNED},
    },
    "oasst-sft-7-llama-30b-xor.json": {
        "release": "oasst-sft-7-llama-30b",
        "description": "OpenAssistant LLaMA-30B SFT 7, legacy XOR payload, files one level down",
        "needs": {"meta_original": _META_30B, "hf_base": _PINNED},
    },
    "oasst-rlhf-2-llama-30b-7k-steps-xor.json": {
        "release": "oasst-rlhf-2-llama-30b-7k-steps",
        "description": "OpenAssistant LLaMA-30B RLHF 2 (7k steps), legacy XOR payload",
        "needs": {"meta_original": _META_30B, "hf_base": _PINNED},
    },
    "pygmalion-7b.json": {
        "release": "pygmalion-7b",
        "repo_id": "PygmalionAI/pygmalion-7b",
        "description": "Pygmalion 7B, legacy XOR payload against LLaMA-7B converted to HF format",
        "needs": {
            "hf_base": "LLaMA-7B converted with convert_llama_weights_to_hf.py; no base checksums "
            "are published, so only the decoded files can be verified",
        },
    },
}


def build(ref_dir: Path, out_dir: Path) -> list[Path]:
    written = []
    for fname, extra in RELEASES.items():
        ref = json.loads((ref_dir / fname).read_text())
        algo = ref["algorithm"]
        stages = {
            stage: {name: {algo: digest} for name, digest in sorted(files.items())}
            for stage, files in ref["stages"].items()
        }
        sources = {"release": ref["source_url"], **ref.get("stage_sources", {})}
        doc = {
            "format": "xorweights-checksums/1",
            "generated_by": "tools/build_manifests.py from published lists; do not edit by hand",
            "release": extra["release"],
            "repo_id": extra.get("repo_id", ref["release"]),
            "description": extra["description"],
            "needs": extra["needs"],
            "stages": stages,
            "sources": sources,
            "caveats": ref.get("notes", []),
        }
        if "xor_payload_lfs_sha256" in ref:
            doc["payload_sha256"] = ref["xor_payload_lfs_sha256"]
        path = out_dir / f"{extra['release']}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    ref = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "reference" / "checksums"
    for p in build(ref, ROOT / "checksums"):
        print(p.relative_to(ROOT))
