"""Where a release's checksums come from: those given, the bundled manifest for its repo id, or
the checksum block of its model card (`remote_checksums` fetches only the card).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._display import quoted
from ..checksum_manifests import bundled_release
from ..checksum_types import MAX_MANIFEST_BYTES, ChecksumManifest
from ..errors import HubError, InputError, XorWeightsError
from ..outfolder.paths import check_regular_file, read_bounded
from . import model_card
from .access import (
    HubAccess,
    HubFile,
    hf_lib,
    hub_error,
    is_unreachable,
    list_repo,
    offline_default,
    short_error,
)
from .download import download_files, download_kwargs
from .model_card import CARD_NAME
from .repo_spec import is_repo_spec, parse_payload_spec

logger = logging.getLogger(__name__)


def card_readable(listing: Mapping[str, HubFile], repo_id: str) -> bool:
    """Whether the repo has a card small enough to read checksums from (a larger one is skipped)."""
    if CARD_NAME not in listing:
        return False
    if listing[CARD_NAME].size > MAX_MANIFEST_BYTES:
        logger.warning(
            "%s: its %s is %d bytes, too large to read checksums from; not used",
            repo_id,
            CARD_NAME,
            listing[CARD_NAME].size,
        )
        return False
    return True


def bundled_checksums(repo_id: str) -> ChecksumManifest | None:
    """The manifest in `checksums/` for a repo id, if the release is a known one."""
    found = bundled_release(repo_id)
    if found is not None:
        logger.info("%s: checksums from the bundled manifest %s", repo_id, found.release)
    return found


def card_checksums(card: Path, root: Path, repo_id: str) -> ChecksumManifest | None:
    """The checksum block of a downloaded model card (None: the card has none).

    Raises:
        `UnsafePathError`: the card links out of `root`, or is not a regular file.
        `FormatError`: the card has a malformed checksum block.
    """
    if not check_regular_file(card, root):
        return None
    text = read_bounded(card, MAX_MANIFEST_BYTES, "a model card").decode("utf-8", errors="replace")
    found = model_card.parse(text, str(card))
    if found is not None:
        logger.info("%s: checksums from its model card", repo_id)
    return found


def checksum_names(manifest: ChecksumManifest | None) -> frozenset[str]:
    """Every file name a checksum manifest lists, in any stage."""
    if manifest is None:
        return frozenset()
    stages = [*manifest.stages.values(), *([manifest.unstaged] if manifest.unstaged is not None else [])]
    return frozenset(n for files in stages for n in files)


def release_checksums(payload: Any) -> ChecksumManifest | None:
    """The checksums of a fetched release: those it was fetched with, the bundled manifest for
    its repo id, else its card's.

    None when none exists (a native payload still carries its own in `xorweights.json`).

    Raises:
        `FormatError`: the card has a malformed checksum block.
    """
    return first_checksums(payload.repo_id, payload.checksums, payload.card, payload.root)


def first_checksums(
    repo_id: str, given: ChecksumManifest | None, card: Path | None, root: Path
) -> ChecksumManifest | None:
    """`given`, else the bundled manifest for the repo id, else the checksums of the `card`."""
    found = given or bundled_checksums(repo_id)
    if found is None and card is not None:
        found = card_checksums(card, root, repo_id)
    return found


def remote_checksums(
    spec: str, access: HubAccess | None = None, *, revision: str | None = None
) -> ChecksumManifest:
    """The checksums of a repo `owner/name[@revision]`: the bundled manifest for its id, else the
    checksum block of its model card (only the card is downloaded).

    Raises:
        `HubError`: unknown repo or revision, no access, offline with no cached card, or a card
            without a checksum block; the message also says no local file has that name.
    """
    rs = parse_payload_spec(spec, revision=revision)
    if rs.subfolder is not None:
        raise InputError(f"checksums come from a model card: {quoted(spec)} names a subfolder", path=spec)
    found = bundled_checksums(rs.repo_id)
    if found is not None:
        return found
    access = dataclasses.replace(access or HubAccess(), local_dir=None)  # --local-dir is the payload's
    revision = rs.revision or "main"
    hf = hf_lib()
    kw = download_kwargs(access, progress=False)
    offline = offline_default() if access.offline is None else access.offline
    endpoint = access.endpoint or hf.constants.ENDPOINT
    unreachable: Exception | None = None
    try:
        if not offline:  # the listing first: an unknown repo, no Hub, no card, are told at once
            try:
                _, listing = list_repo(
                    hf.HfApi(endpoint=access.endpoint, token=access.token), rs.repo_id, revision
                )
            except Exception as e:
                if hub_error(e, rs.repo_id, revision, endpoint) is not None or not is_unreachable(e):
                    raise
                unreachable = e
            else:
                if CARD_NAME not in listing:
                    raise HubError(
                        f"{rs.repo_id}@{revision} on {endpoint} has no model card (README.md) to "
                        "read checksums from",
                        path=spec,
                    )
                if not card_readable(listing, rs.repo_id):
                    raise HubError(
                        f"the model card of {rs.repo_id}@{revision} is too large to read", path=spec
                    )
        if offline or unreachable is not None:  # the card cached by an earlier run, if any
            kw = {k: v for k, v in kw.items() if k not in ("endpoint", "token", "force_download")} | {
                "local_files_only": True
            }
        root = download_files(hf, rs.repo_id, revision, [CARD_NAME], **kw)
    except XorWeightsError:
        raise
    except Exception as e:
        err = hub_error(e, rs.repo_id, revision, endpoint, spec=spec, kind="file")
        if err is not None:
            raise err from e
        why = (
            "offline mode (HF_HUB_OFFLINE)"
            if offline
            else f"the Hub is unreachable ({short_error(unreachable or e)})"
        )
        if offline or unreachable is not None or is_unreachable(e):
            raise HubError(
                f"no local file {quoted(spec)}, and the model card of {rs.repo_id}@{revision} is not in the "
                f"Hub cache: {why}",
                path=spec,
            ) from e
        raise HubError(
            f"{rs.repo_id}@{revision} on {endpoint} has no model card (README.md) to read checksums from "
            f"({short_error(e)})",
            path=spec,
        ) from e
    found = card_checksums(root / CARD_NAME, root, rs.repo_id)
    if found is None:
        raise HubError(
            f"the model card of {rs.repo_id}@{revision} has no xorweights checksum block "
            f"({model_card.MARKER} and a json block); pass a manifest or md5sum file instead",
            path=spec,
        )
    return found


def checksums_from_hub(spec: str, access: HubAccess | None, revision: str | None) -> ChecksumManifest | None:
    """`remote_checksums` for a repo id, None for anything else (see `checksum_manifests.RemoteChecksums`)."""
    return remote_checksums(spec, access, revision=revision) if is_repo_spec(spec) else None
