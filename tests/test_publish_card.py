"""The model card `publish` writes, read back from the test Hub: the install line (the version
that wrote the payload and where it comes from) and the license's front matter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import xorweights
from tests.hubserver import TOKEN
from tests.test_hub import card_of
from xorweights import publish
from xorweights.errors import InputError

pytestmark = pytest.mark.hub  # the card is read back with huggingface_hub's ModelCard


def _pub(hub, **kw: object) -> dict[str, object]:
    return {"endpoint": hub.url, "token": TOKEN, **kw}


def _section(text: str, title: str) -> str:
    """The lines of a card's `## title` section, up to the next one."""
    rest = text.split(f"\n## {title}\n", 1)[1]
    return rest.split("\n## ", 1)[0]


def test_the_card_says_which_version_to_install_and_from_where(native_release, hub, tmp_path) -> None:
    version = xorweights.__version__
    report = publish(native_release["payload"], "me/install-xor", **_pub(hub))
    assert report.install == f"xorweights=={version}"
    card = card_of(hub, "me/install-xor", tmp_path).text
    install = _section(card, "Install")
    assert f"written by xorweights {version}" in install and "Python Package Index (PyPI)" in install
    assert f"```bash\npip install xorweights=={version}\n```" in install
    assert "pip install xorweights\n" not in card  # never a bare, unpinned name
    assert "With xorweights installed (see *Install*)" in _section(card, "Decode")

    # Named by the publisher: that spec, said to come from the publisher, not from the index.
    spec = "git+https://example.org/team/xorweights.git@v" + version
    report = publish(native_release["payload"], "me/install-xor", install_from=spec, **_pub(hub))
    assert report.install == spec and not report.unchanged  # only the card changed
    install = _section(card_of(hub, "me/install-xor", tmp_path).text, "Install")
    assert f"```bash\npip install {spec}\n```" in install
    assert f"written by xorweights {version}" in install and "PyPI" not in install
    for bad in ("", "two words", "--index-url=https://evil.example/simple", "x\ny"):
        with pytest.raises(InputError, match="`install_from`"):
            publish(native_release["payload"], "me/install-xor", install_from=bad, **_pub(hub))


def test_license_other_carries_its_name_and_link(native_release, hub, tmp_path) -> None:
    link = "https://example.org/terms/LICENSE"
    report = publish(
        native_release["payload"],
        "me/terms-xor",
        license_name="my-license-1.0",
        license_link=link,
        **_pub(hub),
    )
    assert (report.license, report.license_name, report.license_link) == ("other", "my-license-1.0", link)
    card = card_of(hub, "me/terms-xor", tmp_path)
    assert card.data.license == "other"
    assert card.data.license_name == "my-license-1.0" and card.data.license_link == link
    assert f"this release's `my-license-1.0` ({link})" in _section(card.text, "License")
    # A file of the repo is a link the Hub accepts too.
    publish(
        native_release["payload"], "me/terms-xor", license_name="t-1", license_link="LICENSE", **_pub(hub)
    )
    assert card_of(hub, "me/terms-xor", tmp_path).data.license_link == "LICENSE"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"license": "apache-2.0", "license_name": "x-1", "license_link": "LICENSE"}, "other only"),
        ({"license_name": "x-1"}, "`license_name` needs `license_link` too"),
        ({"license_link": "LICENSE"}, "`license_link` needs `license_name` too"),
        ({"license_name": "My License", "license_link": "LICENSE"}, "license name 'My License'"),
        ({"license_name": "x-1", "license_link": "javascript:alert(1)"}, "license link"),
        ({"license_name": "x-1", "license_link": "../LICENSE"}, "license link"),
    ],
)
def test_license_terms_are_refused_before_any_request(native_release, hub, kw, message) -> None:
    before = len(hub.state.requests)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        publish(native_release["payload"], "me/refused-xor", **kw, **_pub(hub))  # type: ignore[arg-type]
    assert len(hub.state.requests) == before


def test_cli_publish_license_terms_and_install_from(native_release, hub, tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf")}
    args = [sys.executable, "-m", "xorweights.cli", "publish", str(native_release["payload"]), "me/cli-terms"]
    spec = "https://example.org/wheels/xorweights-0.1.0-py3-none-any.whl"
    more = ["--license-name", "my-license-1.0", "--license-link", "LICENSE.md", "--install-from", spec]
    done = subprocess.run([*args, *more], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"the card says to install it with: pip install {spec}" in done.stdout
    card = card_of(hub, "me/cli-terms", tmp_path)
    assert (card.data.license, card.data.license_name, card.data.license_link) == (
        "other",
        "my-license-1.0",
        "LICENSE.md",
    )
    bad = subprocess.run(
        [*args, "--license", "mit", "--license-name", "x-1", "--license-link", "LICENSE", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--license-name and --license-link name terms the Hub does not list" in bad.stderr


def test_the_default_install_line_from_a_local_install_is_said_to_be_unproven(
    native_release, hub, tmp_path
) -> None:
    """This suite runs an install from a local checkout (PEP 610 `direct_url.json`): the card's
    default `pip install xorweights==V` is not known to work for its readers, and publish says so
    after its report; with a wheel attached or a source named, it says nothing of the kind."""
    from importlib.metadata import distribution

    assert distribution("xorweights").read_text("direct_url.json")  # an install from a local copy
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf")}
    args = [sys.executable, "-m", "xorweights.cli", "publish", str(native_release["payload"]), "me/default"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "not from a package index" in done.stderr and "attach its wheel" in done.stderr
    named = subprocess.run(
        [*args, "--install-from", "xorweights==0.1.0"], capture_output=True, text=True, env=env
    )
    assert named.returncode == 0 and "package index" not in named.stderr
