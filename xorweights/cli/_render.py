"""Printing of reports: the human-readable lines of each command, and `--json` documents."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._display import escaped, json_safe, needs_escape, shown
from .._units import human_bytes as _human
from .._units import human_rate
from ..checksum_types import STAGES
from ..checksums import ChecksumManifest, ChecksumReport, VerifyReport
from ..formats.raw_storage import manifest_items
from ..model_files import WEIGHT_SUFFIXES
from ..reports import DecodeReport, EncodeReport

if TYPE_CHECKING:  # these modules load only when their command runs
    from ..demo import DemoReport
    from ..hub import PublishReport
    from ..llama.base import BaseReport


def emit_json(doc: Any) -> None:
    """Print `doc` as the command's JSON report on stdout."""
    click.echo(json.dumps(json_safe(doc), indent=2, sort_keys=True))


def print_decode(report: DecodeReport) -> None:
    """Each file decoded, kept or copied, what proved it, and the totals."""
    if report.source:
        fresh = any(not f.kept for f in report.files)
        how = (
            "streamed, checked against the sha256 the Hub reports as they were read"
            if report.streamed
            else "files read were first checked against the sha256 the Hub reports"
        )
        click.echo(f"payload {shown(report.source)}" + (f": {how}" if fresh else ""))
    if report.base_source:
        click.echo(
            f"base {shown(report.base_source)}: files read were checked against the Hub's sizes and sha256"
        )
    delta = report.format.startswith("delta:")
    for f in report.files:
        how = "copied" if f.action == "copy" else ("xor, compressed" if f.compressed else "xor")
        if delta and f.name.endswith(WEIGHT_SUFFIXES):
            how = "recovered"
        how = "kept" if f.kept else how
        proof = []
        if f.base_verified:
            proof.append("base ok")
        if f.verified:
            proof.append("output ok (" + ", ".join(f"{a} {d}" for a, d in sorted(f.digests.items())) + ")")
        click.echo(f"  {shown(f.name):<40} {_human(f.size):>10}  {how:<15} {'; '.join(proof)}")
    made = [f for f in report.files if not f.kept]
    n_made = sum(f.size for f in made)
    kept = len(report.files) - len(made)
    click.echo(
        (
            f"decoded {len(made)} files, {_human(n_made)} in {report.seconds:.1f} s "
            f"({human_rate(n_made, report.seconds)}) into {shown(report.out_dir)}"
            if made
            else f"nothing to decode: {shown(report.out_dir)} already holds every output"
        )
        + (f"; {kept} already in place (kept)" if made and kept else "")
        + (f"; gzip payloads read with {report.gzip_backend}" if report.gzip_backend else "")
    )
    if report.format == "xorweights":
        n_ok = sum(f.verified for f in report.files)
        manifest = shown(Path(report.payload_dir) / "xorweights.json")
        click.echo(
            f"verified against {manifest}: {n_ok} outputs (sha256), "
            "every base tensor and base file they use checked before each output took its name"
        )
    elif report.format.startswith("delta:"):
        recipe = report.format.split(":", 1)[1]
        click.echo(
            f"recovered with recipe {recipe}"
            + (f" ({shown(report.release)})" if report.release else "")
            + f"; every tensor's sha256 is in {shown(report.tensor_manifest or '')} "
            "(check any copy with `xorweights verify DIR --checksums` that file)"
        )
        if report.model_sum is not None:
            published = report.model_sum_expected
            click.echo(
                f"sum of all weights {report.model_sum:.4f}"
                + (
                    f", published {published}: ok"
                    if published is not None
                    else " (no published sum to check)"
                )
            )
    elif report.release:
        n_ok = sum(f.verified for f in report.files)
        n_base = sum(f.base_verified for f in report.files)
        click.echo(f"verified against {shown(report.release)}: {n_ok} outputs, {n_base} base files")
        for name in report.unverified:
            click.echo(f"warning: {shown(name)}: no published digest; not verified", err=True)
    else:
        click.echo("no --checksums given: outputs were not verified", err=True)


def print_encode(report: EncodeReport, manifest: Path | None) -> None:
    """The totals, what xorweights.json records and where --manifest was written."""
    stored = (
        f" (stored as {_human(report.bytes_written)})"
        if report.bytes_written != report.bytes_processed
        else ""
    )
    click.echo(
        f"encoded {len(report.files)} files, {_human(report.bytes_processed)}{stored} in "
        f"{report.seconds:.1f} s ({human_rate(report.bytes_processed, report.seconds)}) into "
        f"{shown(report.out_dir)}"
    )
    if report.native_manifest is not None:
        items = manifest_items(report.native_manifest, Path(report.out_dir))
        raw = [r for r in items if not r.grown]
        grown = sum(r.nbytes for r in items if r.grown)
        click.echo(
            f"xorweights.json written: {len(report.native_manifest.base_tensors)} base tensors used, "
            f"{len(raw)} items ({_human(sum(r.nbytes for r in raw))}) stored raw"
            + (" as allowed by --allow-raw" if raw else "")
            + (f", {_human(grown)} of new vocabulary rows unmasked" if grown else "")
        )
        for f in report.native_manifest.files:
            if f.note:
                click.echo(f"note: {shown(f.name)}: {shown(f.note)}", err=True)
    for name, tail in report.unmasked_tails:
        click.echo(
            f"note: {shown(name)}: its last {_human(tail)} lie past the end of its base file and are "
            "stored unmasked, as the legacy format does; the native format (--format xorweights) masks "
            "tensor by tensor",
            err=True,
        )
    if manifest:
        click.echo(f"checksums written to {manifest}")


def print_publish(report: PublishReport) -> None:
    """What was committed (or that nothing was), and how to decode it."""
    what = f"{len(report.files)} files ({_human(report.payload_bytes)} of {report.format} payload)"
    if report.unchanged:
        click.echo(
            f"{report.url} at {report.revision} already holds these {what}: nothing to upload "
            f"(commit {report.commit})"
        )
    else:
        click.echo(
            f"published {what} to {report.url} at {report.revision} (commit {report.commit})"
            + (f"; removed {len(report.removed)} files of the earlier payload" if report.removed else "")
        )
    click.echo(
        f"decode with: xorweights decode {report.repo_id}"
        + (f"@{report.revision}" if report.revision != "main" else "")
        + " --base BASE_DIR --out OUT_DIR"
    )
    if report.install.startswith("install/"):  # the wheel the release carries
        click.echo(f"the card says to install xorweights from the repo's {shlex.quote(report.install)}")
    elif report.install:
        click.echo(f"the card says to install it with: pip install {shlex.quote(report.install)}")


def print_convert(report: BaseReport) -> None:
    """Each converted base file with its md5, and the release it was verified against."""
    for f in report.files:
        click.echo(
            f"  {f.name:<40} {_human(f.size):>10}  md5 {f.digests['md5']}  {'verified' if f.verified else ''}"
        )
    click.echo(
        f"converted a {report.layout} base into {report.out_dir} in {report.seconds:.1f} s"
        + (f"; verified against {report.release} hf_base" if report.release else "")
    )
    for name in report.unverified:
        click.echo(f"warning: {name}: no published digest; not verified", err=True)


def print_verify(report: VerifyReport) -> None:
    """One line a file (ok, MISMATCH, MISSING, extra), then the verdict."""
    bad = {m.name: m for m in report.mismatches}
    tensors = report.stage == "tensors"  # tensor_manifest.TENSORS_STAGE (not imported: CLI start-up)
    for name in report.checked:
        if name in bad:
            m = bad[name]
            hint = f"; {m.hint}" if m.hint else ""
            click.echo(f"MISMATCH {shown(name)}: {m.algorithm} {m.actual}, expected {m.expected}{hint}")
        elif not tensors:  # hundreds of tensors: only the failures are listed
            click.echo(f"ok       {shown(name)}")
    for name in report.missing:
        click.echo(f"MISSING  {shown(name)}")
    for name in report.extra:
        click.echo(f"extra    {shown(name)} (not listed)")
    verdict = "OK" if report.ok else "FAILED"
    click.echo(
        f"{verdict}: {len(report.matched)}/{len(report.checked) + len(report.missing)} "
        f"{'tensors' if tensors else 'files'} of "
        f"{shown(report.release)} [{report.stage}] match"
    )


def print_sum_lines(report: ChecksumReport) -> None:
    """Into a pipe or file, the exact bytes `md5sum` writes; on a terminal, names escaped (as `ls` does)."""
    if not sys.stdout.isatty():
        click.echo(report.data(), nl=False)
        return
    for name, digest in sorted(report.entries.items()):
        if needs_escape(name) or "\\" in name:
            click.echo(f"\\{digest}  {escaped(name)}")
        else:
            click.echo(f"{digest}  {name}")


def release_doc(m: ChecksumManifest) -> dict[str, Any]:
    """A known release as `releases --json` lists it."""
    return {
        "release": m.release,
        "repo_id": m.repo_id,
        "description": m.description,
        "stages": {
            s: {"files": len(f), "algorithms": sorted({a for d in f.values() for a in d.algorithms()})}
            for s, f in m.stages.items()
        },
        "not_included": dict(m.not_included),
        "needs": dict(m.needs),
        "caveats": list(m.caveats),
    }


def print_releases(docs: list[dict[str, Any]]) -> None:
    """Each release (`release_doc`): the checksums it publishes by stage and which of them xorweights
    carries (and checks), what decoding it needs, its caveats."""
    for d in docs:
        click.echo(f"{d['release']}  ({d['repo_id']})")
        if d["description"]:
            click.echo(f"  {d['description']}")
        click.echo("  checksums:")
        for stage in STAGES:
            s = d["stages"].get(stage)
            if s:
                have = f"published; {s['files']} files, {'+'.join(s['algorithms'])}, checked by xorweights"
            elif stage in d["not_included"]:
                why = d["not_included"][stage]
                have = f"published, but not included in xorweights, so not checked ({why})"
            else:
                have = "not published by the release"
            click.echo(f"    {stage:<14} {have}")
        for what, need in d["needs"].items():
            click.echo(f"  needs ({what}): {need}")
        for c in d["caveats"]:
            click.echo(f"  caveat: {c}")
        click.echo("")


def print_delta_releases(docs: list[dict[str, Any]]) -> None:
    """Each additive-delta release: its recipe, base and published sum."""
    for d in docs:
        click.echo(f"{d['release']}  ({d['repo_id']})")
        click.echo(f"  {d['description']}")
        click.echo(f"  recipe {d['recipe']}; base: {d['base']}")
        total = d["model_sum"]
        if total:
            where = total["value"] if total["value"] is not None else f"the repo's {total['file']}"
            click.echo(f"  published sum of all weights: {where} (checked by xorweights)")
        else:
            click.echo("  published sum of all weights: none (nothing published to check the result against)")
        click.echo("")


def _done(r: EncodeReport | DecodeReport) -> str:
    rate = human_rate(r.bytes_written, r.seconds)
    return f"{len(r.files)} files, {_human(r.bytes_written)} in {r.seconds:.2f} s ({rate})"


def _matched(r: VerifyReport) -> str:
    return f"{len(r.matched)}/{len(r.checked)} files match"


def print_demo(rep: DemoReport, workdir: Path | None) -> None:
    """The demo's steps, one line each, and its verdict."""
    e, c, d, ld = rep.encode, rep.base_copy, rep.decode, rep.load
    assert e.native_manifest is not None
    grown = sum(i.nbytes for i in manifest_items(e.native_manifest, Path(e.out_dir)) if i.grown)
    kept = sum(f.kept for f in d.files)
    algorithms = sorted({t.algorithm for t in e.native_manifest.base_tensors.values()})
    tensors = f"{rep.base_tensors} base tensors proven by {'/'.join(algorithms)} as the pass read them, "
    proven = f"{kept} outputs kept from an earlier run, " if kept else tensors
    click.echo(
        f"1. generate  base/ and finetuned/: {rep.layers} layers, {_human(rep.model_bytes)}, vocabulary "
        f"grown by 16 rows, added_tokens.json ({rep.generate_seconds:.1f} s)"
    )
    click.echo("native format (xorweights.json): decodes against any copy of the base's tensors")
    click.echo(
        f"2. encode    finetuned/ vs base/ -> payload/: {_done(e)}; {rep.base_tensors} base tensors "
        f"used, {_human(grown)} of new vocabulary rows unmasked"
    )
    click.echo(
        f"3. re-save   base/ ({len(c.source_files)} safetensors files) -> base-copy/ ({len(c.files)} "
        f"PyTorch .bin shards, tensors in reverse order, written without torch): "
        f"{_human(c.bytes_written)} in {c.seconds:.2f} s"
    )
    click.echo(
        f"4. decode    payload/ + base-copy/ -> decoded/: {_done(d)}; {proven}"
        f"{sum(f.verified for f in d.files)} outputs proven by sha256"
    )
    click.echo(f"5. verify    decoded/ against payload/xorweights.json: {_matched(rep.verify)}")
    click.echo(
        f"6. load      load_state_dict(payload/, base-copy/, framework='numpy'): {ld.name} "
        f"{tuple(ld.shape)} {ld.dtype} in {ld.seconds:.2f} s, "
        + ("equal to the fine-tuned tensor" if ld.equal else "DIFFERENT from the fine-tuned tensor")
    )
    click.echo("legacy format (oasst): file by file, the base must be byte-identical")
    click.echo(
        f"7. encode    finetuned/ XOR base/ -> oasst-payload/: {_done(rep.legacy_encode)}; "
        "oasst-checksums.json written" + _tails(rep.legacy_encode.unmasked_tails)
    )
    ldec = rep.legacy_decode
    click.echo(
        f"8. decode    oasst-payload/ XOR base/ -> oasst-decoded/: {_done(ldec)}; "
        f"{sum(f.base_verified for f in ldec.files)} base files and "
        f"{sum(f.verified for f in ldec.files)} outputs verified in the same pass"
    )
    click.echo(f"9. verify    oasst-decoded/ against oasst-checksums.json: {_matched(rep.legacy_verify)}")
    click.echo(
        "demo OK: both decodes are byte-identical to the fine-tuned files, and so is the loaded tensor"
        if rep.ok
        else "demo FAILED"
    )
    if workdir is not None:
        click.echo(f"files kept in {workdir}")


def _tails(tails: tuple[tuple[str, int], ...]) -> str:
    """The demo's words for a legacy payload's unmasked tails."""
    if not tails:
        return ""
    total = _human(sum(t for _, t in tails))
    return f"; {total} of {len(tails)} files past their base's end stored unmasked, as that format does"
