"""Exit codes, for every error the package raises: 0 success, 1 only a checksum or verification
mismatch (`ChecksumMismatchError` and its subclasses), 2 every bad input, 130/143 interrupted.

Each error class of `xorweights.errors` is provoked by a real command in a subprocess (the class is
found in the module: a new one without a case here fails `test_every_error_class_has_a_case`).
Each is run twice: plainly, printing exactly one line on stderr, and with `--json`, printing
nothing on stderr and one JSON error object on stdout naming that very class and the same code.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import xorweights
from tests.conftest import encoded_release, legacy_folders, random_bytes, write_files
from tests.hubserver import TOKEN
from tests.process_states import handles, opened, signal_stopped, step_until
from xorweights import errors
from xorweights.cli import EXIT_BAD_INPUT, EXIT_MISMATCH
from xorweights.outfolder.atomic import BOOKKEEPING_DIR

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, mounts tmpfs")

SIZES = {"pytorch_model.bin": 3_000_000, "config.json": 400}


def concrete_errors() -> list[type[errors.XorWeightsError]]:
    """Every error class `xorweights.errors` defines, but the base class (never raised itself)."""
    return [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.XorWeightsError)
        and c is not errors.XorWeightsError
        and c.__module__ == errors.__name__
    ]


def expected_code(cls: type[BaseException]) -> int:
    return EXIT_MISMATCH if issubclass(cls, errors.ChecksumMismatchError) else EXIT_BAD_INPUT


def cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xorweights.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


# --- the cases: each makes real inputs under `root` and returns a command and its environment -----


def native_pair(root: Path, *, compress: str | None = None) -> tuple[Path, Path, Path]:
    """A small native payload (safetensors, float16), its base and the fine-tuned folder."""
    rng = np.random.default_rng(2)
    base = {f"w{i}": rng.standard_normal((256, 64)).astype(np.float16) for i in range(3)}
    tuned = {n: (t.astype(np.float32) + np.float32(0.01)).astype(np.float16) for n, t in base.items()}
    save_file(base, str(write_files(root / "base", {}) / "model.safetensors"))
    save_file(tuned, str(write_files(root / "ft", {}) / "model.safetensors"))
    xorweights.encode(root / "ft", base=root / "base", out=root / "payload", compress=compress)  # type: ignore[arg-type]
    return root / "payload", root / "base", root / "ft"


def legacy(root: Path) -> tuple[Path, Path, Path]:
    """A legacy payload, its base and its checksum manifest."""
    payload, base, manifest, _ = encoded_release(root, SIZES, release="rel-xor", seed=5)
    return payload, base, manifest


def case_input(root: Path) -> list[object]:
    payload, base, _ = legacy(root)
    return ["decode", payload, "--base", base, "--out", root / "out", "--revision", "main"]


def case_missing_file(root: Path) -> list[object]:
    payload, _, _ = legacy(root)
    return ["decode", payload, "--base", root / "no-base", "--out", root / "out"]


def case_format(root: Path) -> list[object]:
    (root / "sums.json").write_text("{not json")
    return ["verify", write_files(root / "folder", {"a": b"a"}), "--checksums", root / "sums.json"]


def case_unknown_release(root: Path) -> list[object]:
    return ["verify", write_files(root / "folder", {"a": b"a"}), "--checksums", "no-such-release"]


def case_output_exists(root: Path) -> list[object]:
    payload, base, _ = legacy(root)
    write_files(root / "out", {"config.json": b"{}"})  # not ours: never overwritten without --force
    return ["decode", payload, "--base", base, "--out", root / "out"]


def case_unsafe_path(root: Path) -> list[object]:
    payload, base, _ = native_pair(root)
    doc = json.loads((payload / "xorweights.json").read_text())
    doc["files"][0]["name"] = "../model.safetensors"
    (payload / "xorweights.json").write_text(json.dumps(doc))
    return ["decode", payload, "--base", base, "--out", root / "out"]


def case_not_regular_file(root: Path) -> list[object]:
    payload, base, _ = native_pair(root)
    (payload / "model.safetensors").unlink()
    os.mkfifo(payload / "model.safetensors")  # a FIFO would block a reader: refused before any read
    return ["decode", payload, "--base", base, "--out", root / "out"]


def case_file_too_large(root: Path) -> list[object]:
    with open(root / "sums.json", "wb") as f:
        f.truncate(1 << 40)  # sparse: larger than any manifest may be
    return ["verify", write_files(root / "folder", {"a": b"a"}), "--checksums", root / "sums.json"]


def case_folder_locked(root: Path) -> Iterator[list[object]]:
    payload, base, _ = legacy(root)
    (root / "out").mkdir()
    fd = os.open(root / "out", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another xorweights process would hold it
    try:
        yield ["decode", payload, "--base", base, "--out", root / "out"]
    finally:
        os.close(fd)


def case_io_failure(root: Path, tmpfs: Callable[..., Path]) -> list[object]:
    payload, base, _ = legacy(root)
    return ["decode", payload, "--base", base, "--out", tmpfs(read_only=True) / "out"]


def case_raw_storage(root: Path) -> list[object]:
    from tests.test_leaks import make_pair

    ft, base = make_pair(root)
    (ft / "model.onnx_data").write_bytes(random_bytes(4096, 1))  # may hold weights, has no base
    return ["encode", ft, "--base", base, "--out", root / "payload"]


def case_unmasked_frame(root: Path, hub) -> tuple[list[object], dict[str, str]]:
    from tests.test_leaks import _store_in_the_clear, make_pair

    ft, base = make_pair(root)
    xorweights.encode(ft, base=base, out=root / "payload")
    _store_in_the_clear(root / "payload", ft, {"lm_head.weight"})  # a frame holds the tensor in the clear
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(root / "hf")}
    return ["publish", root / "payload", "me/leak-xor"], env


def case_no_space(root: Path, tmpfs: Callable[..., Path]) -> list[object]:
    payload, base, _ = legacy(root)
    return ["decode", payload, "--base", base, "--out", tmpfs(mib=1) / "out"]


def case_not_a_payload(root: Path) -> list[object]:
    base, tuned = legacy_folders(root)
    return ["decode", tuned, "--base", base, "--out", root / "out"]  # a model folder as the payload


def case_incompatible_base(root: Path) -> list[object]:
    from tests.delta_models import VOCAB, llama_state, perturbed, save_model

    base = llama_state()
    save_model(root / "base", base)
    save_model(root / "delta", {k: v.half() for k, v in perturbed(base, VOCAB + 3, 8).items()})
    # fastchat does not grow the vocabulary: the delta's recipe is fastchat-v0
    return ["decode", root / "delta", "--base", root / "base", "--out", root / "out", "--recipe", "fastchat"]


def case_hub(root: Path, hub) -> tuple[list[object], dict[str, str]]:
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(root / "hf")}
    return ["decode", "me/no-such-repo", "--base", root, "--out", root / "out"], env


def case_checksum_mismatch(root: Path) -> list[object]:
    payload, base, _ = native_pair(root, compress="zstd")
    data = bytearray((payload / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x55  # damaged since it was made: its frames no longer decode
    (payload / "model.safetensors").write_bytes(bytes(data))
    return ["decode", payload, "--base", base, "--out", root / "out"]


def case_base_mismatch(root: Path) -> list[object]:
    payload, _, manifest = legacy(root)
    wrong = write_files(root / "wrong", {n: random_bytes(s - 64, 9) for n, s in SIZES.items()})
    return ["decode", payload, "--base", wrong, "--out", root / "out", "--checksums", manifest]


def case_implausible_output(root: Path) -> list[object]:
    payload, base, _ = legacy(root)
    (base / "config.json").write_bytes(random_bytes((base / "config.json").stat().st_size, 8))
    return ["decode", payload, "--base", base, "--out", root / "out"]  # no digests: the output is checked


def case_payload_mismatch(root: Path, hub) -> tuple[list[object], dict[str, str]]:
    payload, base, _ = legacy(root)
    repo = root / "repo"
    shutil.copytree(payload, repo)
    hub.state.add_folder("me/xor", repo)
    hub.state.tamper("me/xor", "pytorch_model.bin")  # served bytes differ from the sha256 listed
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(root / "hf")}
    return ["decode", "me/xor", "--base", base, "--out", root / "out"], env


def case_input_changed(root: Path) -> tuple[list[object], Callable[[int], bool], Path]:
    """Run by `run_interrupting`: the payload file grows while the pass reads it."""
    payload, base, _ = legacy(root)
    out = root / "out"
    in_pass = opened(payload, lambda f: f.endswith(".bin"))
    state = lambda pid: any((out / BOOKKEEPING_DIR).glob(".xorweights-*.part")) and in_pass(pid)  # noqa: E731
    return ["decode", payload, "--base", base, "--out", out, "-j", "1"], state, payload / "pytorch_model.bin"


CASES: dict[str, Callable[..., object]] = {
    "InputError": case_input,
    "MissingFileError": case_missing_file,
    "FormatError": case_format,
    "UnknownReleaseError": case_unknown_release,
    "OutputExistsError": case_output_exists,
    "UnsafePathError": case_unsafe_path,
    "NotRegularFileError": case_not_regular_file,
    "FileTooLargeError": case_file_too_large,
    "FolderLockedError": case_folder_locked,
    "IOFailure": case_io_failure,
    "InputChangedError": case_input_changed,
    "RawStorageError": case_raw_storage,
    "UnmaskedFrameError": case_unmasked_frame,
    "NoSpaceError": case_no_space,
    "NotAPayloadError": case_not_a_payload,
    "IncompatibleBaseError": case_incompatible_base,
    "HubError": case_hub,
    "ChecksumMismatchError": case_checksum_mismatch,
    "BaseMismatchError": case_base_mismatch,
    "ImplausibleOutputError": case_implausible_output,
    "PayloadMismatchError": case_payload_mismatch,
}


def test_every_error_class_has_a_case() -> None:
    names = {c.__name__ for c in concrete_errors()}
    assert names == set(CASES), (
        f"no case for {sorted(names - set(CASES))}; stale: {sorted(set(CASES) - names)}"
    )


def _command(
    name: str, root: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[list[object], dict[str, str]]]:
    """The case's command and environment (a generator case holds its state while the command runs)."""
    case = CASES[name]
    kw = {p: request.getfixturevalue(p) for p in inspect.signature(case).parameters if p != "root"}
    made = case(root, **kw)
    if inspect.isgenerator(made):
        yield from ((args, {}) for args in made)
        return
    yield made if isinstance(made, tuple) else (made, {})  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(set(CASES) - {"InputChangedError"}))
def test_each_error_exits_with_its_code_in_one_line(name: str, tmp_path: Path, request) -> None:
    cls = getattr(errors, name)
    code = expected_code(cls)
    for args, env in _command(name, tmp_path, request):
        plain = cli(*args, env=env)
        as_json = cli(*args, "--json", env=env)
    assert plain.returncode == code, plain.stderr
    assert plain.stderr.startswith("Error: ") and plain.stderr.count("\n") == 1, plain.stderr
    assert as_json.stderr == "" and as_json.returncode == code, as_json.stderr
    doc = json.loads(as_json.stdout)["error"]
    assert doc["type"] == name and doc["exit_code"] == code, doc
    assert plain.stderr == f"Error: {doc['message']}\n"


def test_an_input_changed_while_read_exits_2(tmp_path: Path) -> None:
    args, state, victim = case_input_changed(tmp_path)
    for extra in ([], ["--json"]):
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "xorweights.cli", *map(str, args), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert step_until(proc, state), proc.communicate()
        size = victim.stat().st_size
        with open(victim, "ab") as f:  # grows while the process is stopped inside its pass
            f.write(b"\0")
        proc.send_signal(signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=300)
        os.truncate(victim, size)
        assert proc.returncode == EXIT_BAD_INPUT, stderr
        if extra:
            assert stderr == "" and json.loads(stdout)["error"]["type"] == "InputChangedError"
        else:
            assert stderr.startswith("Error: reading ") and stderr.count("\n") == 1, stderr
            assert "it changed while being read" in stderr


def test_the_payload_kind_verdicts_are_bad_input_not_mismatches() -> None:
    """What CI reads: a wrong payload kind, a wrong recipe or an unusable base is never a mismatch."""
    for cls in (errors.NotAPayloadError, errors.IncompatibleBaseError):
        assert issubclass(cls, errors.InputError) and not issubclass(cls, errors.ChecksumMismatchError)


@pytest.mark.parametrize(
    "args",
    [
        ["decode", "p", "--base", "b", "--out", "o", "--bogus"],  # an unknown option
        ["decode", "p", "--base", "b"],  # a missing option
        ["decode"],  # a missing argument
        ["decode", "p", "--base", "b", "--out", "o", "--recipe", "nope"],  # a bad choice
        ["no-such-command"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    done = cli(*args)
    assert done.returncode == EXIT_BAD_INPUT and done.stdout == ""
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.rstrip().endswith("--help'.")
    as_json = cli(*args, "--json")
    assert as_json.returncode == EXIT_BAD_INPUT and as_json.stderr == ""
    assert json.loads(as_json.stdout)["error"]["exit_code"] == EXIT_BAD_INPUT


def test_recipe_given_for_an_xor_payload_says_so(tmp_path: Path) -> None:
    payload, base, _ = legacy(tmp_path / "legacy")
    native, nbase, _ = native_pair(tmp_path / "native")
    for p, b, said in (
        (payload, base, "is not an additive delta: no weight file in it is a valid model file as it is"),
        (native, nbase, "is a native XOR payload (it has xorweights.json), not an additive delta"),
    ):
        done = cli("decode", p, "--base", b, "--out", tmp_path / "out", "--recipe", "fastchat")
        assert done.returncode == EXIT_BAD_INPUT and done.stderr.count("\n") == 1, done.stderr
        assert said in done.stderr and "decode it without --recipe" in done.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_exits_130_or_143(tmp_path: Path, sig: int, code: int) -> None:
    payload, base, _ = legacy(tmp_path)
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "xorweights.cli",
        "decode",
        payload,
        "--base",
        base,
        "--out",
        out,
        "-j",
        "1",
    ]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    in_pass = opened(payload, lambda f: f.endswith(".bin"))

    def ready(pid: int) -> bool:
        return (
            handles(signal.SIGTERM)(pid)
            and any((out / BOOKKEEPING_DIR).glob(".xorweights-*.part"))
            and in_pass(pid)
        )

    assert step_until(proc, ready), proc.communicate()
    signal_stopped(proc, sig)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr
    assert stdout == "" and stderr.count("\n") == 1 and "interrupted" in stderr


def test_success_is_0(tmp_path: Path) -> None:
    payload, base, manifest = legacy(tmp_path)
    done = cli("decode", payload, "--base", base, "--out", tmp_path / "out", "--checksums", manifest, "-q")
    assert done.returncode == 0 and done.stdout == done.stderr == ""
    digest = hashlib.sha256((tmp_path / "out" / "config.json").read_bytes()).hexdigest()
    assert digest in (tmp_path / "m.json").read_text()


def test_a_bug_exits_70_with_its_traceback_never_1(tmp_path: Path) -> None:
    """An error of no kind the boundary knows (here a ZeroDivisionError raised where the decode
    command calls the library) is a bug: its traceback and exit 70, never 1 (a mismatch to CI)."""
    code = (
        "import sys, xorweights.cli as c, xorweights.cli.decode as d\n"
        "d.decode = lambda *a, **k: 1 / 0\n"
        "sys.argv = ['xorweights', 'decode', 'p', '--base', 'b', '--out', 'o']\n"
        "c.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 70, done.stderr
    assert "Traceback" in done.stderr and "ZeroDivisionError" in done.stderr
