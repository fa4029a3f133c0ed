"""Issue 26: outputs postprocessed in the handler's thread (``webapp.serving.postprocessed``, events
registered with ``postprocess=False``) reach the page exactly as gradio's own postprocessing sends them."""
from __future__ import annotations

import asyncio
import os

import pytest
from PIL import Image

from webapp import serving


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-temp")))
    folder = tmp_path_factory.mktemp("films")
    paths = []
    for i in range(3):
        paths.append(str(folder / f"film{i}.png"))
        Image.new("L", (40 + i, 32), color=40 * i).save(paths[-1])
    return paths


def _handler(films):
    def handler(text: str):
        if text == "none":
            return [], "", "", {"hits": []}, None, None, None
        gallery = [(p, f"#{i} · caption <b>{text}</b>") for i, p in enumerate(films, 1)]
        preview = Image.new("L", (64, 48), color=len(text) % 255)
        return (gallery, f"<p>{text}</p>", f"**OK:** {text}\n- note", {"hits": [{"id": 1, "score": 0.5}], "q": text},
                {"label": text}, preview, {"abnormal": 0.25, "normal": 0.75})
    return handler


def test_postprocessed_outputs_equal_gradios_own(films):
    import gradio as gr
    from gradio.state_holder import SessionState

    handler = serving.gallery_outputs(_handler(films))
    with gr.Blocks() as demo:
        text = gr.Textbox()
        outputs = [gr.Gallery(), gr.HTML(), gr.Markdown(), gr.JSON(), gr.State(None),
                   gr.Image(type="pil", format="jpeg"), gr.Label(num_top_classes=2)]
        plain_btn, fast_btn = gr.Button(), gr.Button()
        plain_btn.click(handler, text, outputs, api_name="plain")
        fast_btn.click(serving.postprocessed(handler, outputs), text, outputs, api_name="fast", postprocess=False)
    fns = {fn.api_name: fn for fn in demo.fns.values()}

    async def answer(name: str, query: str):
        state = SessionState(demo)
        out = await demo.process_api(fns[name], [query], state=state, session_hash=name)
        return out["data"], state[outputs[4]._id]

    for query in ("small left pleural effusion", "none"):
        plain, plain_state = asyncio.run(answer("plain", query))
        fast, fast_state = asyncio.run(answer("fast", query))
        assert fast == plain and fast_state == plain_state
    assert len(plain[0]) == 0 and plain[5] is None  # the empty answer too
    plain, _ = asyncio.run(answer("plain", "x"))
    assert [g["image"]["orig_name"] for g in plain[0]] and plain[0][0]["image"]["url"].startswith("/gradio_api/file=")


def test_gallery_data_is_gradios_gallery_postprocess(films):
    import gradio as gr

    gallery = gr.Gallery()
    captioned = [(p, f"caption {i}") for i, p in enumerate(films)]
    assert serving.gallery_data(captioned).model_dump() == gallery.postprocess(captioned).model_dump()
    assert serving.gallery_data(films).model_dump() == gallery.postprocess(films).model_dump()
    assert serving.gallery_data([]).model_dump() == gallery.postprocess([]).model_dump()
    # anything else is left to gradio: URLs, SVG, arrays
    assert serving.gallery_data([("https://example.org/a.png", "c")]) is None
    assert serving.gallery_data([("/x/icon.svg", "c")]) is None
    assert serving.gallery_data([(Image.new("L", (4, 4)), "c")]) is None


def test_gallery_folder_is_the_first_static_path_tried(films):
    from gradio.data_classes import _StaticFiles

    staged = serving.stage_file(films[0])
    assert _StaticFiles.all_paths[0] == serving.gallery_dir().resolve()
    assert staged.startswith(str(serving.gallery_dir()))


def test_preprocessed_inputs_equal_gradios_own(films):
    """``serving.preprocessed`` (events with ``preprocess=False``) hands the handler what gradio's own
    preprocessing would, and refuses what it would refuse with the same message."""
    import gradio as gr
    from gradio.state_holder import SessionState

    def handler(*args):
        return repr(args)

    with gr.Blocks() as demo:
        inputs = [gr.File(type="filepath", file_count="single"), gr.Textbox(), gr.Slider(1, 30, value=8, step=1),
                  gr.Dropdown(["any", "normal", "abnormal"], value="any"), gr.Radio(["hybrid", "dense"], value="hybrid"),
                  gr.Checkbox(), gr.Number(value=1, precision=0, minimum=1)]
        out = gr.Textbox()
        plain_btn, fast_btn = gr.Button(), gr.Button()
        plain_btn.click(handler, inputs, out, api_name="plain")
        fast_btn.click(serving.preprocessed(handler, inputs), inputs, out, api_name="fast", preprocess=False)
    fns = {fn.api_name: fn for fn in demo.fns.values()}

    async def answer(name: str, payloads: list):
        try:
            return (await demo.process_api(fns[name], list(payloads), state=SessionState(demo), session_hash=name))["data"]
        except Exception as exc:  # noqa: BLE001 - compared, not swallowed
            return f"{type(exc).__name__}: {exc}"

    upload = {"path": films[0], "orig_name": "film0.png", "meta": {"_type": "gradio.FileData"}}
    cases = [
        [upload, "small left pleural effusion", 8, "abnormal", "dense", True, 3],
        [None, "", 1.0, "any", "hybrid", False, 2.7],
        [None, None, 30, None, None, False, None],
        [upload, "x", 99, "any", "hybrid", False, 1],  # out of the slider's range
        [None, "x", 5, "sometimes", "hybrid", False, 1],  # not among the choices
    ]
    answers = []
    for payloads in cases:
        plain = asyncio.run(answer("plain", payloads))
        fast = asyncio.run(answer("fast", payloads))
        assert fast == plain, payloads
        answers.append(plain)
    assert films[0] not in answers[0][0] and "film0.png" in answers[0][0]  # the upload's cached copy, by path
    assert "'small left pleural effusion', 8" in answers[0][0] and "'dense', True, 3" in answers[0][0]
    assert all(isinstance(a, str) and "Error" in a for a in answers[3:])  # both refused, same message
