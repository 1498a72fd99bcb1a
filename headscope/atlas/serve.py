"""`headscope view`: serve a report folder with its model loaded, so the page's attention viewer (and
token view) takes any prompt typed into it.

A stdlib `http.server` bound to 127.0.0.1 only (never another interface): GET serves the folder's files
(no directory listings); GET /attention says the endpoint exists (the page feature-detects it and shows
its text box); POST /attention with the JSON body {"prompt": "..."} answers the viewer's data for that
prompt (`viewer_data`, the report's window size). Bounded: a body of at most MAX_BODY bytes, a prompt of
at most MAX_PROMPT_CHARS characters (the model's context cuts it further), one forward at a time. The
POST must be `Content-Type: application/json`, which a page of another site cannot send to this server
without a CORS preflight this server never grants.
"""

from __future__ import annotations

import functools
import json
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..errors import HeadscopeError, InputError
from ..models import load_model, model_info
from .atlas import Atlas
from .viewer import MAX_TOKENS, viewer_data

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_BODY = 64_000
MAX_PROMPT_CHARS = 20_000
ENDPOINT = "/attention"


class _Handler(SimpleHTTPRequestHandler):
    server: ViewServer

    def log_message(self, format, *args):
        pass

    def list_directory(self, path):
        self.send_error(HTTPStatus.NOT_FOUND, "no directory listings")
        return None

    def _json(self, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.split("?")[0] == ENDPOINT:
            s = self.server
            return self._json(
                200, {"model": s.model_name, "max_tokens": s.max_tokens, "max_prompt_chars": MAX_PROMPT_CHARS}
            )
        return super().do_GET()

    def do_POST(self):
        if self.path.split("?")[0] != ENDPOINT:
            return self._json(404, {"error": f"POST goes to {ENDPOINT}"})
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return self._json(415, {"error": "send the prompt as JSON: Content-Type: application/json"})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._json(411, {"error": "a Content-Length is required"})
        if not 0 < length <= MAX_BODY:
            return self._json(413, {"error": f"the request body must be 1 to {MAX_BODY} bytes"})
        try:
            doc = json.loads(self.rfile.read(length))
            prompt = doc.get("prompt") if isinstance(doc, dict) else None
        except ValueError:
            return self._json(400, {"error": 'the body is not JSON: send {"prompt": "some text"}'})
        if not isinstance(prompt, str) or not prompt.strip():
            return self._json(400, {"error": 'give a non-empty text: {"prompt": "some text"}'})
        if len(prompt) > MAX_PROMPT_CHARS:
            return self._json(413, {"error": f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}"})
        try:
            return self._json(200, self.server.attention(prompt))
        except HeadscopeError as err:
            return self._json(400, {"error": str(err)})


class ViewServer(ThreadingHTTPServer):
    """The report folder's files plus POST /attention on `model` (see the module docstring)."""

    daemon_threads = True

    def __init__(self, model, folder: str | Path, port: int = DEFAULT_PORT, max_tokens: int | None = None):
        folder = Path(folder)
        if not (folder / "report.html").is_file():
            raise InputError(f"{folder} holds no report.html. Fix: pass --report the folder `headscope report` wrote")
        self.model = model
        self.model_name = model_info(model).name
        self.max_tokens = max_tokens or MAX_TOKENS
        self._lock = threading.Lock()  # one forward at a time: the model is not re-entrant with hooks
        handler = functools.partial(_Handler, directory=str(folder.resolve()))
        try:
            super().__init__((HOST, port), handler)
        except OSError as err:
            raise InputError(
                f"cannot listen on {HOST}:{port}: {err.strerror or err}. Fix: pass another --port (0: any free port)"
            ) from None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/report.html"

    def attention(self, prompt: str) -> dict:
        with self._lock:
            return viewer_data(self.model, prompt, max_tokens=self.max_tokens)


def open_server(
    model=None, report: str | Path = "headscope-report", port: int = DEFAULT_PORT, *, device=None, dtype=None
) -> ViewServer:
    """A ViewServer on the report folder (not yet serving: call serve_forever, or use `view`). model: a
    bridge, a name for `load_model`, or None = the model the report was built on. The model must have
    the report's layer x head grid; the window size is the report's. device, dtype: for a model loaded here."""
    atlas = Atlas.load(report)  # a folder without a saved atlas fails here, before the model loads
    if not hasattr(model, "cfg"):
        name = model if model is not None else atlas.provenance.get("load name", atlas.model)
        try:
            model = load_model(name, device=device, dtype=dtype)
        except HeadscopeError as err:
            raise InputError(
                f"cannot load the report's model {name!r} ({err}). Fix: pass --model the name or "
                "folder it was built from"
            ) from None
    info = model_info(model)
    if (info.n_layers, info.n_heads) != (atlas.n_layers, atlas.n_heads):
        raise InputError(
            f"{info.name} has {info.n_layers} layers x {info.n_heads} heads; the report in {report} "
            f"has {atlas.n_layers} x {atlas.n_heads}. Fix: pass --model the model of the report"
        )
    max_tokens = (atlas.viewer or {}).get("max_tokens", MAX_TOKENS)
    return ViewServer(model, report, port, max_tokens)


def view(
    model=None, report: str | Path = "headscope-report", port: int = DEFAULT_PORT, *, device=None, dtype=None
) -> None:
    """Serve the report until Ctrl-C (`headscope view`)."""
    server = open_server(model, report, port, device=device, dtype=dtype)
    print(f"headscope view: {server.url} (only this machine can open it; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
