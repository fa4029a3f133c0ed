"""The "Compose & compare" tab: image + modifier, why each hit matched, heat-maps, frozen beside fine-tuned."""
from __future__ import annotations

import gradio as gr  # module level: the select handler's gr.SelectData hint must resolve

from webapp import serving
from webapp.composed import DEFAULT_WEIGHT, MAX_WEIGHT, MODES

HELP = ("Start from a radiograph and move the query **with** or **without** a findings phrase "
        "(e.g. *left pleural effusion*): the search runs on normalise(image ± weight × direction) in the "
        "fine-tuned head's shared space, where direction = normalise(phrase − “no acute cardiopulmonary "
        "abnormality”); weight 0 is the image alone. Click a result for a heat-map of the "
        "query regions that make it match.")


def build_compose_tab(extras, examples: list[str]) -> None:
    """Add the tab inside an open ``gr.Tabs`` context and wire its events."""
    with gr.Tab("Compose & compare", id="compose"):
        gr.Markdown(HELP)
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", type="filepath", file_count="single",
                                 elem_id="compose-upload")
                preview = gr.Image(label="Query", type="pil", interactive=False, height=220)
                modifier = gr.Textbox(label="Modifier phrase", placeholder="e.g. left pleural effusion", lines=1,
                                      elem_id="compose-modifier")
                mode = gr.Radio(list(MODES), value="with", label="Modifier")
                weight = gr.Slider(0, MAX_WEIGHT, value=DEFAULT_WEIGHT, step=0.1, label="Weight of the phrase")
                k = gr.Slider(1, 30, value=8, step=1, label="Number of results (k)")
                compare = gr.Checkbox(value=False, label="Frozen vs fine-tuned side by side", elem_id="compose-compare")
                button = gr.Button("Compose search", variant="primary", elem_id="compose-search")
                if examples:
                    gr.Examples(examples, inputs=upload, label="Example uploads")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="compose-status")
                with gr.Row():
                    gallery = gr.Gallery(label="Fine-tuned head", columns=4, height=380, object_fit="contain",
                                         elem_id="compose-gallery")
                    with gr.Column(visible=False) as frozen_col:
                        frozen_gallery = gr.Gallery(label="Frozen backbone (image alone)", columns=4, height=380,
                                                    object_fit="contain", elem_id="frozen-gallery")
                compare_md = gr.Markdown(elem_id="compose-compare-summary")
                with gr.Row():
                    rank = gr.Number(value=1, precision=0, minimum=1, label="Heat-map for result #")
                    heat_btn = gr.Button("Show heat-map", elem_id="heatmap-button")
                heat_img = gr.Image(label="Similarity heat-map over the query", type="pil", interactive=False,
                                    height=320, elem_id="heatmap")
                heat_caption = gr.Markdown(elem_id="heatmap-caption")
                why = gr.HTML(elem_id="compose-why")
                with gr.Accordion("Results as JSON", open=False):
                    records = gr.JSON()

    inputs = [upload, modifier, mode, weight, k, compare]
    outputs = [preview, gallery, why, status, records, frozen_gallery, compare_md, state]
    # gallery images: copies in the temp folder; inputs and outputs processed in the handler's thread (issue 26)
    search = serving.gallery_outputs(extras.search_composed)
    serving.on(button.click, search, inputs, outputs, api_name="search_composed")
    serving.on(modifier.submit, search, inputs, outputs, api_visibility="private")
    compare.change(lambda on: gr.update(visible=bool(on)), compare, frozen_col, api_visibility="private")
    serving.on(compare.change, search, inputs, outputs, api_visibility="private")
    heat_btn.click(extras.heatmap, [state, rank], [heat_img, heat_caption], api_name="heatmap")

    def on_select(st, evt: gr.SelectData):
        picked = int(evt.index) + 1
        return (picked, *extras.heatmap(st, picked))

    gallery.select(on_select, state, [rank, heat_img, heat_caption], api_visibility="private")
