"""`xorweights releases`: the known releases and what decoding each needs."""

from __future__ import annotations

from ..checksums import known_releases
from ._errors import EXIT_OK
from ._group import cli
from ._options import json_option, quiet_option
from ._render import emit_json, print_delta_releases, print_releases, release_doc


@cli.command("releases")
@quiet_option
@json_option
def releases_cmd(quiet: bool, as_json: bool) -> int:  # -q: accepted here as after any command
    """List the known releases: XOR payloads (the checksums each publishes, which of them
    xorweights checks, what decoding each needs) and additive deltas (recipe, base, published sum)."""
    from ..delta.registry import delta_releases

    docs = [release_doc(m) for m in known_releases()]
    deltas = [r.to_dict() for r in delta_releases()]
    if as_json:
        emit_json(docs + deltas)
        return EXIT_OK
    print_releases(docs)
    print_delta_releases(deltas)
    return EXIT_OK
