"""A Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1.

It speaks the part of the Hub's API that `huggingface_hub` uses to download and upload model repos:

- `GET /api/models/{repo}[/revision/{rev}]` (repo info, siblings; `?blobs=true` adds sizes and LFS sha256)
- `GET /api/models/{repo}/tree/{rev}[/{path}]` (file listing with git oid, size and LFS sha256)
- `HEAD|GET /{repo}/resolve/{rev}/{path}` (ETag, X-Repo-Commit, Content-Length, `Range: bytes=`)
- `POST /api/repos/create`, `POST /api/models/{repo}/branch/{branch}`
- `POST /api/models/{repo}/preupload/{rev}`, `POST /{repo}.git/info/lfs/objects/batch` (basic transfer),
  `PUT` upload and `POST` verify of LFS objects, `POST /api/models/{repo}/commit/{rev}` (ndjson)

Xet storage is not served (clients are run with `HF_HUB_DISABLE_XET=1`, and downloads fall back to
plain HTTP because no `X-Xet-Hash` header is sent). Private repos need `Authorization: Bearer <token>`.
Faults for tests: `cut_after[path] = n` closes the connection after `n` body bytes of the next GET of
`path` from its start that gets that far (a client that hangs up earlier leaves it armed);
`tamper(repo, path)` changes the served bytes while the listing keeps the original sha256;
`faults[suffix] = Fault(kind, value)` answers every request whose path ends with `suffix` brokenly
(a `Retry-After`, a trickled body, a redirect loop, a corrupt gzip body, a dropped connection, an
illegal status line), and `faulted` is set once the server has met a request that way (`trickling`
once the first trickled byte is sent): states tests wait for.
A gated repo (`add_folder(..., gated=True)`) lists its files to anyone but serves them only to the
token, once `HubState.granted` holds it (401 without a token, 403 without access, as the Hub).
Namespaces in `HubState.foreign` belong to someone else: the token may read their public repos but
not create or write there (403, as the Hub answers).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".model", ".gz", ".zst", ".h5", ".npy")
LFS_MIN_SIZE = 10 * 1024 * 1024
POINTER_SIZE = 134


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


#: The write token the test server accepts (tests pass it as HF_TOKEN or token=).
TOKEN = "hf_test_token_0123456789"


@dataclass(frozen=True)
class Entry:
    size: int
    sha256: str
    oid: str
    lfs: bool

    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass(frozen=True)
class Fault:
    """A broken answer (see `HubState.faults`); `value` is what the kind needs.

    - `retry_after`: HTTP 429 with `Retry-After: value` (seconds), to every method.
    - `trickle`: a GET's headers, then one byte of the body every `value` seconds, for as long as
      the client listens (a HEAD is answered normally).
    - `redirect_loop`: HTTP 302 back to the same URL, to every method.
    - `bad_gzip`: a GET answered `Content-Encoding: gzip` with bytes that are no gzip stream.
    - `drop`: a GET's headers and `value` bytes of the body (from the range asked), then the
      connection closed, every time.
    - `bad_status`: an illegal status line, then the connection closed, to every method.
    - `hang`: no answer at all until the client hangs up, to every method.
    """

    kind: str
    value: float = 0

    def applies_to(self, method: str) -> bool:
        return method == "GET" or self.kind in ("retry_after", "redirect_loop", "bad_status", "hang")


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    """Its files are served only to the token, and only once `HubState.granted` holds the repo."""
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, Entry]] = field(default_factory=dict)


#: Bytes sent at a time while throttled: the granularity of the link's clock (10 ms at 25 MB/s).
_THROTTLED_CHUNK = 256 * 1024


#: Link time an idle link keeps for later (so a sender a little late to its next slot, as Python
#: threads are, loses no link time; a link idle longer saves nothing more).
_LINK_SLACK = 0.05


class Link:
    """One link shared by every download: `send` reserves, for each chunk, the next free slot of
    `n / rate` seconds on one clock, then sleeps until that slot ends (the chunk is then written, as
    if it had just arrived through the link). Downloads at once share the rate; an idle link saves
    at most `_LINK_SLACK` seconds of it for later."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free = 0.0
        """When the link is next free (`time.monotonic`)."""

    def send(self, n: int, rate: float) -> None:
        with self._lock:
            self._free = max(self._free, time.monotonic() - _LINK_SLACK) + n / rate
            end = self._free
        while (wait := end - time.monotonic()) > 0:
            time.sleep(wait)


class HubState:
    """Repos, commits and content-addressed blobs, kept under `root`."""

    def __init__(self, root: Path, token: str | None) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.cut_after: dict[str, int] = {}
        self.rate: float | None = None
        """Bytes per second at most for all downloads together (None: unthrottled): one link they share."""
        self.link = Link()
        """The link every download's body is sent through at `rate`."""
        self.granted: set[str] = set()
        """Gated repos whose terms the token's user has accepted."""
        self.foreign: set[str] = set()
        """Namespaces the token's user may not create or write repos in."""
        self.faults: dict[str, Fault] = {}
        """Broken answers, by the suffix of the request paths they apply to."""
        self.faulted = threading.Event()
        """Set once a request has been answered by a fault."""
        self.trickling = threading.Event()
        """Set once a trickled body has sent its first byte."""
        self._n = 0

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        (self.blobs / sha).write_bytes(data)
        return sha

    def commit(
        self, repo: Repo, branch: str, files: dict[str, Entry | None], parent: str | None = None
    ) -> str:
        with self.lock:
            head = repo.branches.get(branch)
            if parent is not None and parent != head:
                raise ValueError(f"parent commit {parent} is not the head of {branch} ({head})")
            tree = dict(repo.commits.get(head, {})) if head else {}
            for path, entry in files.items():
                if entry is None:
                    tree = {p: e for p, e in tree.items() if p != path and not p.startswith(path + "/")}
                else:
                    tree[path] = entry
            self._n += 1
            sha = hashlib.sha1(f"{repo.repo_id}{head}{self._n}{sorted(tree.items())}".encode()).hexdigest()
            repo.commits[sha] = tree
            repo.branches[branch] = sha
            return sha

    def add_folder(
        self, repo_id: str, folder: Path, *, private: bool = False, branch: str = "main", gated: bool = False
    ) -> str:
        """Create (or update) `repo_id` with every file below `folder`; returns the commit id."""
        repo = self.repos.setdefault(repo_id, Repo(repo_id, private=private, gated=gated))
        files: dict[str, Entry | None] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            rel = path.relative_to(folder).as_posix()
            files[rel] = Entry(
                len(data), self.put_blob(data), git_oid(data), is_lfs(rel, data[:512], len(data))
            )
        return self.commit(repo, branch, files)

    def tamper(self, repo_id: str, path: str, branch: str = "main") -> None:
        """Serve other bytes for `path` while the listing and ETag keep its original sha256."""
        entry = self.repos[repo_id].commits[self.repos[repo_id].branches[branch]][path]
        blob = self.blobs / entry.sha256
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))


def is_lfs(path: str, sample: bytes, size: int) -> bool:
    """The Hub's rule in short: LFS for model suffixes, large files and binary content."""
    if path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(sample) - 4  # a character cut at the end of the sample is fine
    return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # --- plumbing ----------------------------------------------------------------------------

    @property
    def state(self) -> HubState:
        return self.server.state

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(
        self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        extra = {"X-Error-Code": code} if code else {}
        self._json(status, {"error": message}, {**extra, "X-Error-Message": message, **(headers or {})})

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _authorized(self) -> bool:
        return (
            self.state.token is not None and self.headers.get("Authorization") == f"Bearer {self.state.token}"
        )

    def _repo(self, repo_id: str, *, write: bool = False) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if write and (repo is None or not self._authorized() or repo_id.split("/")[0] in self.state.foreign):
            self._body()  # refused unread, the body would be taken for the next request on the connection
        if repo is not None and write and repo_id.split("/")[0] in self.state.foreign and self._authorized():
            self._error(403, None, f"You don't have the rights to write to {repo_id}")
            return None
        if repo is None or ((repo.private or write) and not self._authorized()):
            if write and repo is not None and not self._authorized():
                self._error(401, None, "Invalid credentials in Authorization header")
            else:
                self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
            return None
        return repo

    def _commit(self, repo: Repo, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return None

    def _at(self, repo_id: str, revision: str) -> tuple[Repo, str] | None:
        """The repo and the commit a revision names, or None after answering with the error."""
        repo = self._repo(repo_id)
        sha = self._commit(repo, revision) if repo is not None else None
        return (repo, sha) if repo is not None and sha is not None else None

    def _route(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        self.state.requests.append((self.command, path, dict(self.headers)))
        fault = next((f for k, f in self.state.faults.items() if path.endswith(k)), None)
        if fault is not None and fault.applies_to(self.command) and fault.kind not in ("trickle", "drop"):
            self._fault(fault)
            return
        for pattern, method, handler in _ROUTES:
            m = re.fullmatch(pattern, path)
            if m and method == self.command or (m and method == "GET" and self.command == "HEAD"):
                handler(self, *m.groups(), query=query)
                return
        self._error(404, None, f"no route for {self.command} {path}")

    do_GET = do_HEAD = do_POST = do_PUT = _route

    def _fault(self, fault: Fault) -> None:
        """Answer with `fault` (every kind but `trickle` and `drop`, which `resolve` serves)."""
        self._body()
        self.state.faulted.set()
        if fault.kind not in ("retry_after", "redirect_loop"):
            self.close_connection = True
        if fault.kind == "retry_after":
            self._error(429, None, "Too many requests", {"Retry-After": str(int(fault.value))})
        elif fault.kind == "redirect_loop":
            self._send(302, b"", {"Location": self.path})
        elif fault.kind == "bad_gzip":
            body = b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4
            self._send(200, body, {"Content-Encoding": "gzip", "Connection": "close"})
        elif fault.kind == "hang":
            while self.connection.recv(1 << 16):  # until the client hangs up
                pass
        elif fault.kind == "bad_status":
            self.wfile.write(b"HTTP/1.1 2OO NOT OK\r\nContent-Length: 0\r\n\r\n")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            raise ValueError(f"unknown fault {fault.kind!r}")

    def _trickle(self, data: Any, interval: float) -> None:
        """Send `data` (an open file) one byte every `interval` seconds until the client hangs up."""
        while byte := data.read(1):
            self.wfile.write(byte)
            self.wfile.flush()
            self.state.trickling.set()
            time.sleep(interval)

    # --- read API ----------------------------------------------------------------------------

    def repo_info(self, repo_id: str, revision: str | None, *, query: dict[str, list[str]]) -> None:
        found = self._at(repo_id, revision or "main")
        if found is None:
            return
        repo, sha = found
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for p, e in sorted(repo.commits[sha].items()):
            s: dict[str, Any] = {"rfilename": p}
            if blobs:
                s.update(size=e.size, blobId=e.oid)
                if e.lfs:
                    s["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": POINTER_SIZE}
            siblings.append(s)
        stamp = "2026-01-01T00:00:00.000Z"
        self._json(
            200,
            {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "disabled": False,
                "gated": "manual" if repo.gated else False,
                "downloads": 0,
                "likes": 0,
                "lastModified": stamp,
                "createdAt": stamp,
                "tags": [],
                "library_name": None,
                "siblings": siblings,
            },
        )

    def tree(self, repo_id: str, revision: str, sub: str | None, *, query: dict[str, list[str]]) -> None:
        found = self._at(repo_id, revision)
        if found is None:
            return
        repo, sha = found
        prefix = unquote(sub) + "/" if sub else ""
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        items: dict[str, dict[str, Any]] = {}
        for p, e in sorted(repo.commits[sha].items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :].split("/")
            for i in range(1, len(rest)):  # folders on the way
                folder = prefix + "/".join(rest[:i])
                if recursive or i == 1:
                    items.setdefault(
                        folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder}
                    )
            if recursive or len(rest) == 1:
                item: dict[str, Any] = {"type": "file", "oid": e.oid, "size": e.size, "path": p}
                if e.lfs:
                    item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": POINTER_SIZE}
                items[p] = item
        if prefix and not items:
            self._error(404, "EntryNotFound", f"{prefix} does not exist on {revision}")
            return
        self._json(200, list(items.values()))

    def resolve(self, repo_id: str, revision: str, file: str, *, query: dict[str, list[str]]) -> None:
        found = self._at(repo_id, revision)
        if found is None:
            return
        repo, sha = found
        if repo.gated and not (self._authorized() and repo_id in self.state.granted):
            # As the Hub answers: 401 to a request without a token, 403 to a token without access.
            anonymous = "Authorization" not in self.headers
            self._error(
                401 if anonymous else 403,
                "GatedRepo",
                f"Access to model {repo_id} is restricted"
                + (
                    ". You must have access to it and be authenticated to access it. Please log in."
                    if anonymous
                    else f" and you are not in the authorized list. Visit {repo_id} to ask for access."
                ),
            )
            return
        name = unquote(file)
        entry = repo.commits[sha].get(name)
        if entry is None:
            self._error(404, "EntryNotFound", f"{name} does not exist", {"X-Repo-Commit": sha})
            return
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{entry.etag()}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        start, end, status = 0, entry.size, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= entry.size:
                self._error(416, None, f"bad range {rng}", {"Content-Range": f"bytes */{entry.size}"})
                return
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, entry.size) if m.group(2) else entry.size
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = self.state.cut_after.get(name) if start == 0 else None
        here = urlsplit(self.path).path
        fault = next((f for k, f in self.state.faults.items() if here.endswith(k)), None)
        if fault is not None and fault.kind in ("trickle", "drop"):
            self.state.faulted.set()
            self.close_connection = True
        if fault is not None and fault.kind == "drop":
            cut = int(fault.value)
        with open(self.state.blobs / entry.sha256, "rb") as f:
            f.seek(start)
            if fault is not None and fault.kind == "trickle":
                self._trickle(f, fault.value)
                return
            left = (end - start) if cut is None else min(cut, end - start)
            while left > 0:
                rate = self.state.rate
                chunk = f.read(min(left, _THROTTLED_CHUNK if rate else 1 << 20))
                if rate:
                    self.state.link.send(len(chunk), rate)
                self.wfile.write(chunk)  # a client gone early raises here: the cut stays armed
                left -= len(chunk)
        if cut is not None:
            if fault is None or fault.kind != "drop":
                self.state.cut_after.pop(name, None)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)

    # --- write API ---------------------------------------------------------------------------

    def validate_yaml(self, *, query: dict[str, list[str]]) -> None:
        self._body()
        self._json(200, {"errors": [], "warnings": []})

    def create_repo(self, *, query: dict[str, list[str]]) -> None:
        if not self._authorized():
            self._error(401, None, "Invalid credentials in Authorization header")
            return
        doc = json.loads(self._body())
        repo_id = f"{doc['organization']}/{doc['name']}" if doc.get("organization") else doc["name"]
        url = f"{self.server.url}/{repo_id}"
        if doc.get("organization") in self.state.foreign:
            namespace = doc["organization"]
            self._error(
                403, None, f'You don\'t have the rights to create a model under the namespace "{namespace}"'
            )
            return
        if repo_id in self.state.repos:
            self._error(409, None, "You already created this model repo", {"X-Url": url})
            return
        private = bool(doc.get("private")) or doc.get("visibility") == "private"
        repo = self.state.repos[repo_id] = Repo(repo_id, private=private)
        attributes = (
            b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
        )
        entry = Entry(len(attributes), self.state.put_blob(attributes), git_oid(attributes), False)
        self.state.commit(repo, "main", {".gitattributes": entry})  # as the Hub: a first commit on main
        self._json(200, {"url": url, "name": repo_id})

    def create_branch(self, repo_id: str, branch: str, *, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        branch = unquote(branch)
        body = self._body()
        start = (json.loads(body) if body else {}).get("startingPoint") or repo.branches.get("main")
        if branch in repo.branches:
            self._error(409, None, f"Reference already exists: refs/heads/{branch}")
            return
        repo.branches[branch] = repo.branches.get(start, start)
        self._json(200, {})

    def preupload(self, repo_id: str, revision: str, *, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        files = json.loads(self._body())["files"]
        head = repo.branches.get(unquote(revision))
        tree = repo.commits.get(head, {}) if head else {}
        modes = []
        for f in files:  # as the Hub: each file's current oid (LFS: sha256), so unchanged ones are left out
            lfs = is_lfs(f["path"], base64.b64decode(f["sample"]), f["size"])
            old = tree.get(f["path"])
            modes.append(
                {
                    "path": f["path"],
                    "shouldIgnore": False,
                    "oid": None if old is None else old.sha256 if old.lfs else old.oid,
                    "uploadMode": "lfs" if lfs else "regular",
                }
            )
        self._json(200, {"files": modes, "commitOid": repo.branches.get(unquote(revision))})

    def lfs_batch(self, repo_id: str, *, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        doc = json.loads(self._body())
        objects = []
        for o in doc["objects"]:
            item: dict[str, Any] = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if not (self.state.blobs / o["oid"]).exists():
                base = f"{self.server.url}/lfs/{repo_id}/{o['oid']}"
                item["actions"] = {
                    "upload": {"href": base, "header": {}},
                    "verify": {"href": base + "/verify"},
                }
            objects.append(item)
        self._json(
            200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
        )

    def lfs_put(self, repo_id: str, oid: str, *, query: dict[str, list[str]]) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            self._error(400, None, "uploaded bytes do not match the oid")
            return
        (self.state.blobs / oid).write_bytes(data)
        self._send(200)

    def lfs_verify(self, repo_id: str, oid: str, *, query: dict[str, list[str]]) -> None:
        doc = json.loads(self._body())
        ok = (self.state.blobs / oid).is_file() and (self.state.blobs / oid).stat().st_size == doc["size"]
        self._json(200 if ok else 404, {"ok": ok})

    def commit(self, repo_id: str, revision: str, *, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        branch = unquote(revision)
        if branch not in repo.branches:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            return
        files: dict[str, Entry | None] = {}
        parent = None
        for line in self._body().splitlines():
            op = json.loads(line)
            key, value = op["key"], op["value"]
            if key == "header":
                parent = value.get("parentCommit")
            elif key == "file":
                data = base64.b64decode(value["content"])
                files[value["path"]] = Entry(len(data), self.state.put_blob(data), git_oid(data), False)
            elif key == "lfsFile":
                blob = self.state.blobs / value["oid"]
                if not blob.is_file():
                    self._error(400, None, f"LFS object {value['oid']} was not uploaded")
                    return
                data = blob.read_bytes()
                files[value["path"]] = Entry(len(data), value["oid"], git_oid(data), True)
            elif key in ("deletedFile", "deletedFolder"):
                files[value["path"]] = None
        try:
            sha = self.state.commit(repo, branch, files, parent)
        except ValueError as e:
            self._error(412, None, str(e))
            return
        self._json(
            200, {"success": True, "commitOid": sha, "commitUrl": f"{self.server.url}/{repo_id}/commit/{sha}"}
        )


_REPO = r"/([\w.-]+/[\w.-]+|[\w.-]+)"
_ROUTES = [
    (rf"/api/models{_REPO}", "GET", lambda h, r, **k: h.repo_info(r, None, **k)),
    (rf"/api/models{_REPO}/revision/([^/]+)", "GET", _Handler.repo_info),
    (rf"/api/models{_REPO}/tree/([^/]+)(?:/(.+))?", "GET", _Handler.tree),
    (rf"{_REPO}/resolve/([^/]+)/(.+)", "GET", _Handler.resolve),
    (r"/api/repos/create", "POST", _Handler.create_repo),
    (rf"/api/models{_REPO}/branch/([^/]+)", "POST", _Handler.create_branch),
    (rf"/api/models{_REPO}/preupload/([^/]+)", "POST", _Handler.preupload),
    (rf"{_REPO}\.git/info/lfs/objects/batch", "POST", _Handler.lfs_batch),
    (rf"/lfs{_REPO}/([0-9a-f]{{64}})", "PUT", _Handler.lfs_put),
    (rf"/lfs{_REPO}/([0-9a-f]{{64}})/verify", "POST", _Handler.lfs_verify),
    (rf"/api/models{_REPO}/commit/([^/]+)", "POST", _Handler.commit),
    (r"/api/validate-yaml", "POST", _Handler.validate_yaml),
]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState
    url: str

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (as faults make them do) is no server error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HubServer:
    """Start with `HubServer(root, token=...)`; `url` is the endpoint for `HF_ENDPOINT`.

    Example:
        >>> with HubServer(tmp_path / "hub", token="hf_test") as hub:
        ...     hub.state.add_folder("org/repo", folder)
    """

    def __init__(self, root: Path, *, token: str | None = None) -> None:
        self.state = HubState(root, token)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self.url = self._server.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll: `shutdown` waits for the serving loop to look (0.5 s by default).
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests_for(self, method: str, suffix: str) -> list[dict[str, str]]:
        """Headers of the requests made with `method` to a path ending in `suffix`."""
        return [h for m, p, h in self.state.requests if m == method and p.endswith(suffix)]
