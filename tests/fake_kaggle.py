"""A stand-in for the Kaggle server on 127.0.0.1:7777 (kagglesdk's TEST environment).

Only the server is replaced: the real kaggle client builds, authenticates and sends the requests. A pushed script
kernel runs here, on the CPU, as Kaggle runs it: its inputs laid out under a temporary /kaggle/input (datasets as
uploaded, competitions from `competitions`, kernel sources from that kernel's previous version's outputs) and
/kaggle/working remapped by KAGGLE_INPUT_DIR and KAGGLE_WORKING_DIR; its status queued, running, then complete or
error (with its log), and its outputs served for download.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PORT = 7777  # kagglesdk's KaggleEnv.TEST endpoint: http://localhost:7777
SERVICE = "/v1/competitions.CompetitionApiService/"
DATASETS = "/v1/datasets.DatasetApiService/"
KERNELS = "/v1/kernels.KernelsApiService/"
DONE = ("COMPLETE", "ERROR")


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the kernel script's, and training in its own process group)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
            if int(fields[3]) == sid:
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


class FakeKaggle:
    def __init__(self, accept_rules: bool = True):
        self.accept_rules = accept_rules
        self.uploads: list[bytes] = []
        self.submissions: list[dict] = []
        self.auth: list[str] = []
        self.blobs: dict[str, dict] = {}  # token -> {"name", "body"}: every file uploaded for a dataset
        self.datasets: dict[str, list[dict]] = {}  # "owner/slug" -> its versions' requests (the first: create)
        self.kernels: dict[str, list[dict]] = {}  # "owner/slug" -> every push's request
        self.code_submissions: list[dict] = []
        self.upload_names: list[str] = []  # each StartSubmissionUpload's file name
        self.public_scores: list[float | None] = []  # the n-th submission's public score (None, or missing: pending)
        self.competitions: dict[str, str] = {}  # slug -> the local folder a kernel finds as /kaggle/input/<slug>
        self.reject_push = ""  # SaveKernel answers with this error (a quota, an invalid source) when set
        self.gate = threading.Event()  # a pushed kernel stays queued until this is set
        self.gate.set()
        self.stop_when = ""  # a glob under /kaggle/working: the kernel is killed (Kaggle's session limit) once it matches
        self.tamper = None  # called with a finished kernel's working folder before its outputs are served
        self.runs: dict[tuple[str, int], dict] = {}  # (slug, version) -> {"status", "failure", "log", "working"}
        self.root = Path(tempfile.mkdtemp(prefix="fake-kaggle-"))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status: int, body: dict):
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_POST(self):
                request = json.loads(self._body() or b"{}")
                server.auth.append(self.headers.get("Authorization", ""))
                if self.path == SERVICE + "ListSubmissions":
                    listed = [{"ref": i + 1, "date": sub["date"], "description": sub.get("submissionDescription", ""),
                               "fileName": sub["fileName"], "status": "COMPLETE" if score is not None else "PENDING",
                               **({"publicScore": f"{score:.5f}", "privateScore": f"{score:.5f}"}
                                  if score is not None else {})}
                              for i, (sub, score) in enumerate(zip(server.submissions, server.public_scores
                                                                   + [None] * len(server.submissions)))]
                    return self._json(200, {"submissions": listed[::-1]})
                if self.path == SERVICE + "StartSubmissionUpload":
                    server.upload_names.append(request.get("fileName", ""))
                    return self._json(200, {"token": "blob-token", "createUrl": f"http://localhost:{PORT}/upload"})
                if self.path == "/v1/blobs.BlobApiService/StartBlobUpload":
                    token = f"blob-{len(server.blobs)}"
                    server.blobs[token] = {"name": request.get("name"), "body": None}
                    return self._json(200, {"token": token, "createUrl": f"http://localhost:{PORT}/blob/{token}"})
                if self.path == DATASETS + "GetDatasetStatus":
                    ref = f"{request.get('ownerSlug')}/{request.get('datasetSlug')}"
                    if ref not in server.datasets:
                        return self._json(404, {"code": 404, "message": f"dataset {ref} not found"})
                    return self._json(200, {"status": "ready"})
                if self.path == DATASETS + "CreateDataset":
                    ref = f"{request.get('ownerSlug')}/{request.get('slug')}"
                    server.datasets[ref] = [request]
                    return self._json(200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"})
                if self.path == DATASETS + "CreateDatasetVersion":
                    ref = f"{request.get('ownerSlug')}/{request.get('datasetSlug')}"
                    if ref not in server.datasets:
                        return self._json(404, {"code": 404, "message": f"dataset {ref} not found"})
                    server.datasets[ref].append(request)
                    return self._json(200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"})
                if self.path == SERVICE + "ListCompetitions":
                    slug = request.get("search", "")
                    return self._json(200, {"competitions": [{"ref": f"https://www.kaggle.com/competitions/{slug}",
                                                              "userHasEntered": server.accept_rules}]})
                if self.path == "/v1/kernels.KernelsApiService/SaveKernel":
                    if not server.accept_rules and request.get("competitionDataSources"):
                        return self._json(403, {"code": 403, "message": "You must accept this competition's rules"})
                    if server.reject_push:
                        return self._json(200, {"ref": "", "url": "", "error": server.reject_push})
                    ref = request.get("slug")
                    server.kernels.setdefault(ref, []).append(request)
                    version = len(server.kernels[ref])
                    if request.get("kernelType") == "script":
                        server.start(ref.split("/")[1], version, request)
                    return self._json(200, {"ref": f"/code/{ref}", "url": f"https://www.kaggle.com/code/{ref}",
                                            "versionNumber": version})
                if self.path in (KERNELS + "GetKernelSessionStatus", KERNELS + "ListKernelSessionOutput"):
                    run = server.runs.get((request.get("kernelSlug"), int(request.get("versionLabel", "v0")[1:] or 0)))
                    if run is None:
                        return self._json(404, {"code": 404, "message": "kernel version not found"})
                    if self.path.endswith("Status"):
                        return self._json(200, {"status": run["status"], **({"failureMessage": run["failure"]}
                                                                           if run["failure"] else {})})
                    working, key = run["working"], f"{request.get('kernelSlug')}/{request.get('versionLabel')}"
                    files = [{"fileName": str(p.relative_to(working)),
                              "url": f"http://localhost:{PORT}/output/{key}/{p.relative_to(working)}"}
                             for p in sorted(working.rglob("*")) if p.is_file()] if run["status"] in DONE else []
                    log = json.dumps([{"stream_name": "stdout", "time": 0.0, "data": line}
                                      for line in run["log"].splitlines(keepends=True)])
                    return self._json(200, {"files": files, "log": log})
                if self.path == SERVICE + "CreateCodeSubmission":
                    if not server.accept_rules:
                        return self._json(403, {"code": 403, "message": "You must accept this competition's rules"})
                    server.code_submissions.append(request)
                    return self._json(200, {"message": "Your code submission was queued", "ref": 1})
                if self.path == SERVICE + "CreateSubmission":
                    if not server.accept_rules:
                        return self._json(403, {"code": 403, "message": "You must accept this competition's rules"})
                    import datetime as dt
                    server.submissions.append(request | {
                        "fileName": server.upload_names[-1] if server.upload_names else "",
                        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
                    return self._json(200, {"message": "Successfully submitted to Digit Recognizer"})
                return self._json(404, {"code": 404, "message": f"unknown {self.path}"})

            def do_GET(self):
                parts = self.path.split("/", 4)  # '', 'output', slug, 'v<N>', the file's path
                run = server.runs.get((parts[2], int(parts[3][1:]))) if len(parts) == 5 and parts[1] == "output" else None
                file = run["working"] / parts[4] if run else None
                if file is None or not file.is_file():
                    return self._json(404, {"code": 404, "message": "no such output"})
                raw = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_PUT(self):
                body = self._body()
                token = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/blob/") and token in server.blobs:
                    server.blobs[token]["body"] = body
                else:
                    server.uploads.append(body)
                self._json(200, {})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def dataset_files(self, ref: str) -> dict[str, bytes]:
        """The latest version of a dataset, as uploaded: file name -> bytes."""
        request = self.datasets[ref][-1]
        files = request.get("files") or request.get("body", {}).get("files", [])
        return {self.blobs[f["token"]]["name"]: self.blobs[f["token"]]["body"] for f in files}

    def start(self, slug: str, version: int, request: dict) -> None:
        """Lay out the kernel's inputs and run its script in a thread, as Kaggle runs a pushed version."""
        folder = self.root / slug / f"v{version}"
        inputs, working = folder / "input", folder / "working"
        working.mkdir(parents=True)
        for ref in request.get("datasetDataSources") or []:
            target = inputs / ref.split("/")[1]
            target.mkdir(parents=True)
            for name, body in self.dataset_files(ref).items():
                if name.endswith(".zip"):  # Kaggle unpacks a folder uploaded zipped
                    zipfile.ZipFile(io.BytesIO(body)).extractall(target / name[:-4])
                else:
                    (target / name).write_bytes(body)
        for slug_ in request.get("competitionDataSources") or []:
            source = self.competitions.get(slug_)
            (shutil.copytree(source, inputs / slug_) if source else (inputs / slug_).mkdir(parents=True))
        for ref in request.get("kernelDataSources") or []:
            owner, name = ref.split("/")
            done = [v for (s, v) in self.runs if s == name and v < version]
            source = self.runs[(name, max(done))]["working"] if done else None
            (shutil.copytree(source, inputs / name) if source else (inputs / name).mkdir(parents=True))
        run = self.runs[(slug, version)] = {"status": "QUEUED", "failure": "", "log": "", "working": working}
        script = folder / "script.py"
        script.write_text(request["text"])
        env = dict(os.environ, KAGGLE_INPUT_DIR=str(inputs), KAGGLE_WORKING_DIR=str(working))
        threading.Thread(target=self._execute, args=(run, script, env), daemon=True).start()

    def _execute(self, run: dict, script: Path, env: dict) -> None:
        self.gate.wait()
        run["status"] = "RUNNING"
        log = open(script.with_suffix(".log"), "w+")  # noqa: SIM115 - read back below
        proc = subprocess.Popen([sys.executable, str(script)], cwd=run["working"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        killed = False
        while proc.poll() is None:
            if self.stop_when and next(run["working"].glob(self.stop_when), None) is not None:
                kill_session(proc.pid)  # the session limit: every process of it, no warning, the outputs as they are
                proc.wait()
                killed = True
            time.sleep(0.05)
        log.seek(0)
        run["log"] = log.read()
        log.close()
        if self.tamper is not None:
            self.tamper(run["working"])
        run["failure"] = "Session timed out" if killed else "" if proc.returncode == 0 else "Kernel failed"
        run["status"] = "ERROR" if killed or proc.returncode else "COMPLETE"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.gate.set()
        shutil.rmtree(self.root, ignore_errors=True)
