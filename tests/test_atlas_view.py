"""`headscope view`: the report served on 127.0.0.1 with its model answers POST /attention with the
viewer's data of any prompt; the served page shows a text box and redraws the viewer and token view."""

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from headscope.atlas import build_atlas
from headscope.atlas.serve import MAX_BODY, open_server
from headscope.atlas.viewer import decode, viewer_data
from headscope.errors import InputError
from headscope.models import load_model
from headscope.testing.browser import open_page


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    model = load_model("testing:tiny")
    out = tmp_path_factory.mktemp("view")
    build_atlas(model, out, only=["attention-sinks"], static=False, progress=False, viewer_max_tokens=12)
    return model, out


@pytest.fixture
def served(tiny_report):
    model, out = tiny_report
    server = open_server(model, out, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, model
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _post(server, body: bytes, content_type="application/json"):
    url = f"http://127.0.0.1:{server.server_address[1]}/attention"
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_answers_the_viewer_data_of_any_prompt(served):
    server, model = served
    assert server.server_address[0] == "127.0.0.1"
    prompt = "t2 t3 t4 t5 t2 t3 t4 t5 t6 t7 t2 t3 t4 t5 t8"  # 16 tokens: windowed to the report's 12
    status, doc = _post(server, json.dumps({"prompt": prompt}).encode())
    assert status == 200
    ref = viewer_data(model, prompt, max_tokens=12)
    assert doc["windowed"] and doc["keys"] == ref["keys"] and doc["tokens"] == ref["tokens"]
    np.testing.assert_array_equal(decode(doc), decode(ref))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with urllib.request.urlopen(base + "/attention", timeout=10) as res:  # what the page feature-detects
        assert json.loads(res.read())["max_tokens"] == 12
    with urllib.request.urlopen(base + "/report.html", timeout=10) as res:
        assert b"viewer-prompt-box" in res.read()
    # bad requests: one clear message each, the server keeps running
    assert _post(server, b'{"prompt": ""}')[0] == 400
    assert _post(server, b"not json")[0] == 400
    assert _post(server, b'{"prompt": "t2"}', "text/plain")[0] == 415
    assert _post(server, json.dumps({"prompt": "t2 " * MAX_BODY}).encode())[0] == 413
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(base + "/scores/", timeout=10)  # no directory listings
    assert _post(server, json.dumps({"prompt": "t2 t3"}).encode())[1]["n_tokens"] == len(
        viewer_data(model, "t2 t3")["tokens"]
    )


def test_server_refuses_a_model_of_another_grid_and_a_folder_without_a_report(tiny_report, tmp_path):
    _, out = tiny_report
    with pytest.raises(InputError, match="layers x"):
        open_server(load_model("testing:tiny", n_layers=3), out, port=0)
    with pytest.raises(InputError, match="no saved atlas"):
        open_server(None, tmp_path, port=0)


def test_served_page_takes_a_typed_prompt(served):
    server, model = served
    prompt = "t9 t8 t7 t9 t8 t7"
    ref = viewer_data(model, prompt, max_tokens=12)
    with open_page(server.url) as (page, problems):
        assert page.locator("#viewer-prompt-box").is_visible()
        assert not page.locator("#viewer-static-note").is_visible()
        before = page.locator("#token-view .hs-tv-head").first.locator(".hs-tv-tok").count()
        page.fill("#viewer-prompt", prompt)
        page.click("#viewer-run")
        page.wait_for_function("() => document.getElementById('viewer-status').textContent.endsWith('tokens')")
        ticks = page.evaluate("() => document.getElementById('viewer-plot').layout.xaxis.ticktext.length")
        z = page.evaluate("() => document.getElementById('viewer-plot').data[0].z")
        shown = page.locator("#token-view .hs-tv-head").first.locator(".hs-tv-tok").all_text_contents()
        how = page.locator("#viewer-how").inner_text()
    assert problems == []
    assert ticks == len(ref["keys"]) and len(shown) == len(ref["tokens"]) != before
    assert f"({ref['n_tokens']} tokens)" in how
    shown_z = np.nan_to_num(np.array(z, dtype=float))  # the page blanks the masked (future) keys
    np.testing.assert_allclose(shown_z, decode(ref)[0, 0], atol=1e-6)  # layer 0, head 0 shown


def test_view_command_says_what_is_wrong(tmp_path, capsys):
    from headscope.cli import main

    assert main(["view", "--report", str(tmp_path / "none"), "--port", "0"]) == 2
    assert "no saved atlas" in capsys.readouterr().err
