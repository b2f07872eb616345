"""Build `checksums/<release>.json` from the published lists in `shared/reference/checksums/`.

Usage: python tools/build_manifests.py [REFERENCE_DIR]   (default: ../shared/reference/checksums)

The reference lists are transcriptions of model cards with their sources; this script maps them
onto the manifest schema (`xorweights-checksums/1`) and adds what each release needs, what it
publishes that the manifest does not carry (`not_included`), and its caveats worded for the user
of `xorweights releases` (the reference's own notes are written for whoever checks the lists).
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

_SFT7_MISSING = "the model card lists them, but they were not read into this package; see the caveat below"

RELEASES = {
    "oasst-sft-6-llama-30b-xor.json": {
        "release": "oasst-sft-6-llama-30b",
        "description": "OpenAssistant LLaMA-30B SFT 6 (epoch 7), legacy XOR payload, files two levels down",
        "needs": {"meta_original": _META_30B, "hf_base": _PINNED},
        "caveats": [
            "The decoded md5s list no tokenizer.json: the sft-6 payload has none.",
            "These hf_base md5s are those of the model card's current revision. Its first revision "
            "(commit 8fddd97a860efb7b286a436799026a85cb07696f) listed other md5s for shards 00004, "
            "00005 and 00007 (f845ecc481cb92b8a0586c2ce288b828, f3b13d089840e6caf22cd6dd05b77ef0, "
            "12e0d2d7a9c00c4237b1b0143c48a05e); commit 553fc24 ('New instructions') replaced them.",
        ],
    },
    "oasst-sft-7-llama-30b-xor.json": {
        "release": "oasst-sft-7-llama-30b",
        "description": "OpenAssistant LLaMA-30B SFT 7, legacy XOR payload, files one level down",
        "needs": {"meta_original": _META_30B, "hf_base": _PINNED},
        "not_included": {"hf_base": _SFT7_MISSING, "decoded": _SFT7_MISSING},
        "caveats": [
            "xorweights checks Meta's original files against the sft-7 model card, but not the "
            "converted base or the decoded files: the card lists their md5s after the meta_original "
            "ones, and they are left out here rather than guessed. To check against them, copy a list "
            "from the card into an md5sum file and give it as the checksums. The converted base comes "
            "from the same pinned conversion as sft-6's and rlhf-2's, so its md5s are expected to "
            "equal theirs; that was not checked against the sft-7 card.",
        ],
    },
    "oasst-rlhf-2-llama-30b-7k-steps-xor.json": {
        "release": "oasst-rlhf-2-llama-30b-7k-steps",
        "description": "OpenAssistant LLaMA-30B RLHF 2 (7k steps), legacy XOR payload",
        "needs": {"meta_original": _META_30B, "hf_base": _PINNED},
        "caveats": [
            "The payload files' sha256 are those the Hub shows for them (Git LFS); xorweights checks "
            "a download against them. The model card itself publishes md5s only.",
            "The model card's first revision ('Prep', commit 32c97cba8fc3173932f89fba6074bf8413dc9154) "
            "was copied from sft-6's old card and carried its superseded hf_base md5s; commit "
            "03ec016dea17fddd329ec927ff38fd4648e1fcd7 (May 22, 2023) corrected them. These are the "
            "corrected ones.",
        ],
    },
    "pygmalion-7b.json": {
        "release": "pygmalion-7b",
        "repo_id": "PygmalionAI/pygmalion-7b",
        "description": "Pygmalion 7B, legacy XOR payload against LLaMA-7B converted to HF format",
        "needs": {
            "hf_base": "LLaMA-7B converted with convert_llama_weights_to_hf.py; no base checksums "
            "are published, so only the decoded files can be verified",
        },
        "caveats": [
            "The release publishes no md5s of Meta's files or of the converted base: its card says to "
            "convert LLaMA-7B with convert_llama_weights_to_hf.py 'for your version of the "
            "transformers library', so only the decoded files are checked.",
            "tokenizer_config.json: the model card gives md5 9b3cf7b8c0e4783dbc1419b4cafe8e1e (listed "
            "here); a Pygmalion documentation guide gives f0b65b44265ba51881b1e1881102504f and tells "
            "users to replace the JSON files with plain ones from a separate zip.",
            "Commit 0b254372d91b4334f603c14c49e4b9b907f67951 ('don't XOR the JSON files') replaced "
            "the XOR-ed JSON files in the repo with plain ones and changed xor_codec.py.",
        ],
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
            "caveats": extra["caveats"],
        }
        if "not_included" in extra:
            doc["not_included"] = extra["not_included"]
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
