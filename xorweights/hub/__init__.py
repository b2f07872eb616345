"""Everything xorweights does with the Hugging Face Hub, one module per concern.

- `repo_spec`: repo ids, revisions and `owner/name[@revision][:subfolder]`, validated.
- `access`: `HubAccess` (where files go, how the Hub is reached), a repo's listing, and what
  the Hub's errors mean.
- `watch`: the rules every Hub request runs under (bounded waits, a minimum progress rate, a stop
  at once), and network errors as one `HubError`.
- `download`: interruptible, retried file downloads and huggingface_hub's download records.
- `checksum_sources`: a release's checksums: given, bundled for its repo id, or its model card's.
- `payload`: `fetch`/`locate_payload` a payload and check its files against the Hub's digests.
- `base_repo`: `fetch_base`, a base by repo id: only the files a payload reads, checked the same way.
- `model_card`: the generated `README.md` of a release and its checksum block.
- `publishing`: `publish` an encoded payload with its card, and check the upload.
- `upload`: create a repo and commit a folder; `wheel`: the card's install line, and the wheel a
  release may carry.

huggingface_hub is imported only inside the functions that call it; torch never is.
"""

from __future__ import annotations

import logging

from .access import HubAccess, HubFile, list_repo, short_error
from .checksum_sources import (
    bundled_checksums,
    card_checksums,
    checksum_names,
    release_checksums,
    remote_checksums,
)
from .download import hub_bars_off
from .model_card import CARD_NAME
from .payload import HubPayload, check_lfs_files, fetch, git_blob_id, locate_payload
from .publishing import PublishReport, publish
from .repo_spec import (
    RepoSpec,
    is_repo_spec,
    parse_payload_spec,
    parse_repo_spec,
    validate_repo_id,
    validate_revision,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CARD_NAME",
    "HubAccess",
    "HubFile",
    "HubPayload",
    "PublishReport",
    "RepoSpec",
    "bundled_checksums",
    "card_checksums",
    "check_lfs_files",
    "checksum_names",
    "fetch",
    "git_blob_id",
    "hub_bars_off",
    "is_repo_spec",
    "list_repo",
    "locate_payload",
    "parse_payload_spec",
    "parse_repo_spec",
    "publish",
    "release_checksums",
    "remote_checksums",
    "short_error",
    "validate_repo_id",
    "validate_revision",
]
