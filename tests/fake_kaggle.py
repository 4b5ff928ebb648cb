"""A stand-in for the Kaggle server on 127.0.0.1:7777 (kagglesdk's TEST environment).

Only the server is replaced: the real kaggle client builds, authenticates and sends the requests.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = 7777  # kagglesdk's KaggleEnv.TEST endpoint: http://localhost:7777
SERVICE = "/v1/competitions.CompetitionApiService/"
DATASETS = "/v1/datasets.DatasetApiService/"


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
                if self.path == "/v1/kernels.KernelsApiService/SaveKernel":
                    if not server.accept_rules and request.get("competitionDataSources"):
                        return self._json(403, {"code": 403, "message": "You must accept this competition's rules"})
                    ref = request.get("slug")
                    server.kernels.setdefault(ref, []).append(request)
                    return self._json(200, {"ref": f"/code/{ref}", "url": f"https://www.kaggle.com/code/{ref}",
                                            "versionNumber": len(server.kernels[ref])})
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

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
