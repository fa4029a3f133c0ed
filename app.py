"""CXR retrieval app: drop a chest X-ray to find similar prior studies and their reports,
or type a findings phrase to find matching radiographs.

    python app.py                         # offline default (builds the demo on first start)
    python app.py --run RUN --index IDX   # a trained model and its index
"""
from __future__ import annotations

import os

# A clinical tool sends nothing out: no usage analytics (must precede importing gradio).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# issue 26: gradio's queue rebuilds a pandas table of its last 10,000 events after EVERY event (for its
# /monitoring summary): a cost that grows with the events served (~2 ms/query after 600, more after
# thousands). Recomputed every 1,000 events instead; the events kept stay bounded.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "2000")

import argparse
import json
import logging
import time
from pathlib import Path

from data.errors import LOAD_ERRORS, REPORTED, one_line
from webapp import hosting, serving
from webapp.loading import load_service
from runtime.option import add_runtime_argument, apply_runtime_argument

log = logging.getLogger("app")

# Text-search worker processes on 2+ cores (--search-workers): with --concurrency 4, the most text + image
# queries/s at 16 clients among the settings `python -m bench.serving --sweep` compares (issue 26).
DEFAULT_SEARCH_WORKERS = 2
EXAMPLE_PHRASES = [
    "large right pleural effusion",
    "small left pleural effusion",
    "cardiomegaly",
    "right upper lobe opacity",
    "left lower lobe atelectasis",
    "right pneumothorax",
    "calcified granuloma",
    "no acute cardiopulmonary abnormality",
]
DISCLAIMER = (
    "**Research tool — not a medical device.** Results are similar studies from an index, not a diagnosis. "
    "Do not use them for clinical decisions."
)
CSS = """
.cxr-card {border-left: 4px solid #9e9e9e; padding: 6px 10px; margin: 6px 0; background: var(--block-background-fill);}
.cxr-card.cxr-abnormal {border-left-color: #c62828;} .cxr-card.cxr-normal {border-left-color: #2e7d32;}
.cxr-card-head {display: flex; gap: 12px; align-items: baseline;} .cxr-score, .cxr-view, .cxr-tags {opacity: .75; font-size: .9em;}
.cxr-card mark {background: #fff59d; padding: 0 2px;}
.cxr-card mark.neg {background: none; color: #757575; text-decoration: line-through;}
.cxr-badge {border-radius: 3px; padding: 0 6px; font-size: .85em; color: #fff; background: #2e7d32;}
.cxr-abnormal .cxr-badge {background: #c62828;}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", metavar="DIR", help="trained run folder (head.safetensors + config.json); default: offline demo")
    p.add_argument("--index", metavar="DIR", help="index built for that run: a folder or milvus://PATH.db#NAME / HOST:PORT#NAME")
    p.add_argument("--data-root", metavar="DIR", help="folder the index's relative image paths live in")
    p.add_argument("--bundle", metavar="PATH_OR_HUB_DATASET_ID", default=os.environ.get("CXR_BUNDLE") or None,
                   help="serve a bundle (python -m index.bundle pack): a folder or a Hugging Face dataset id "
                        "(default: $CXR_BUNDLE, e.g. set as a Space variable)")
    p.add_argument("--backbone-path", metavar="DIR", help="local copy of the run's backbone weights (no hub)")
    p.add_argument("--host", help="address to listen on (default: $CXR_HOST, else 0.0.0.0 on a Space, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: $CXR_PORT, else $GRADIO_SERVER_PORT, else 7860)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    p.add_argument("--concurrency", type=int, default=4, help="queries processed at once (default 4: the best text + image "
                        "throughput at 16 clients on 2 cores with two search workers, python -m bench.serving --sweep)")
    p.add_argument("--search-workers", type=int, metavar="N",  # argparse converts (and checks) a string default
                   default=os.environ.get("CXR_SEARCH_WORKERS", "").strip() or None,
                   help="processes answering text searches beside the web process (default: $CXR_SEARCH_WORKERS, "
                        "else 2 on 2+ cores, else 0 = in the web process; webapp.search_workers, python -m bench.serving --sweep)")
    p.add_argument("--text-mode", choices=("dense", "hybrid"), default=None,
                   help="text search: hybrid fuses the indexed reports with image similarity (default when the "
                        "index has reports); dense is image similarity alone (the paper's setting)")
    p.add_argument("--keep-uploads", action="store_true", help="keep uploaded files in the temp cache (default: deleted once read)")
    serving.add_arguments(p)
    pacs = p.add_argument_group("PACS (issue 27): viewer links and queries by StudyInstanceUID")
    pacs.add_argument("--viewer-url", metavar="TEMPLATE", help="link each PACS hit to a viewer, e.g. "
                      "'http://pacs/ohif/viewer?StudyInstanceUIDs={study_uid}' (none: no link)")
    pacs.add_argument("--dicomweb", metavar="URL", help="DICOMweb root the image tab fetches StudyInstanceUIDs from")
    pacs.add_argument("--dicomweb-auth-file", metavar="JSON", help='its credentials: {"username", "password"} or {"token"}')
    add_runtime_argument(p)
    args = p.parse_args(argv)
    try:  # a Space ($SPACE_ID) listens on 0.0.0.0:$GRADIO_SERVER_PORT; elsewhere loopback (webapp.hosting)
        args.host = args.host or hosting.default_host()
        args.port = args.port or hosting.default_port()
    except ValueError as exc:
        raise SystemExit(f"app.py: {exc}") from None
    problem = hosting.run_index_problem(args.run, args.index, args.bundle)
    if problem:
        raise SystemExit(f"app.py: {problem}")
    return args


def example_uploads() -> list[str]:
    """Real pediatric films (fetched at set-up by `python -m data.pediatric`; never downloaded here)."""
    from data.pediatric import cached_pediatric_films

    films = cached_pediatric_films()
    if not films:
        log.info("no example films cached; run `python -m data.pediatric` to add them")
    return [str(p) for p in films if "NORMAL" in p.parts][:2] + [str(p) for p in films if "PNEUMONIA" in p.parts][:2]


def build_ui(service, examples: list[str], phantom_examples: list[str], pacs_source=None, viewer_url: str | None = None,
             text_search=None):
    """The page; ``text_search`` answers text queries (default ``service.search_text``; the app passes
    ``webapp.search_workers.SearchWorkers.search_text_async``, which gradio awaits on its event loop)."""
    import gradio as gr

    from webapp.service import ANY
    from webapp.text_query import MODES, SIDES, chips_html

    findings = [ANY] + list(service.vocabulary)
    views = [ANY] + service.views
    with gr.Blocks(title="CXR retrieval", delete_cache=(300, 600)) as demo:
        gr.Markdown("# Chest X-ray retrieval\nFind similar prior studies and their reports, or radiographs that match a findings phrase.")
        gr.Markdown(DISCLAIMER)
        query_state = gr.State(None)
        with gr.Tabs():
            with gr.Tab("Search by image", id="image"):
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", type="filepath", file_count="single")
                        study_uid = gr.Textbox(label="…or a StudyInstanceUID from the PACS (Enter searches)", lines=1,
                                               visible=pacs_source is not None, elem_id="study-uid")
                        # jpeg: gradio re-encodes the preview on every query; webp took ~7 ms of CPU, jpeg ~0.2 (issue 26)
                        preview = gr.Image(label="Query (de-identified preview)", type="pil", interactive=False, height=260,
                                           format="jpeg")
                        verdict_img = gr.HTML(elem_id="verdict-image")  # familiarity verdict (webapp.trust)
                        probability = gr.Label(label="Head's normal / abnormal estimate", num_top_classes=2)
                        with gr.Accordion("Filters", open=False):
                            k_img = gr.Slider(1, 30, value=8, step=1, label="Number of results (k)")
                            label_img = gr.Dropdown(["any", "normal", "abnormal"], value=ANY, label="Label")
                            view_img = gr.Dropdown(views, value=ANY, label="View")
                            finding_img = gr.Dropdown(findings, value=ANY, label="Finding")
                        search_img_btn = gr.Button("Search", variant="primary")
                        if examples or phantom_examples:
                            gr.Examples(examples + phantom_examples, inputs=upload, label="Example uploads "
                                        "(real pediatric films: Kermany et al. 2018, CC BY 4.0; and demo phantoms)")
                    with gr.Column(scale=2):
                        status_img = gr.Markdown()
                        gallery_img = gr.Gallery(label="Most similar studies", columns=4, height=420, object_fit="contain")
                        gr.Markdown("### Closest reports")
                        reports_img = gr.HTML()
                        with gr.Accordion("Results as JSON", open=False):
                            json_img = gr.JSON()
            with gr.Tab("Search by text", id="text"):
                with gr.Row():
                    with gr.Column(scale=1):
                        # lines=1: Enter searches (gradio submits on Enter only for one-line boxes); Shift+Enter adds a line
                        text = gr.Textbox(label="Findings phrase", placeholder="e.g. small left pleural effusion (Enter searches)",
                                          lines=1, max_lines=4)
                        chips_txt = gr.HTML(elem_id="parse-chips")  # how the phrase was read (webapp.text_query)
                        verdict_txt = gr.HTML(elem_id="verdict-text")
                        gr.Examples([[p] for p in EXAMPLE_PHRASES], inputs=text, label="Try")
                        with gr.Accordion("Filters", open=False):
                            k_txt = gr.Slider(1, 30, value=8, step=1, label="Number of results (k)")
                            label_txt = gr.Dropdown(["any", "normal", "abnormal"], value=ANY, label="Label")
                            view_txt = gr.Dropdown(views, value=ANY, label="View")
                            finding_txt = gr.Dropdown(findings, value=ANY, label="Finding")
                            side_txt = gr.Dropdown(list(SIDES), value=ANY, label="Side", elem_id="side-filter")
                            mode_txt = gr.Radio(list(MODES), value=service.text_mode, label="Search mode",
                                                info="hybrid: image similarity + the indexed reports; dense: image similarity only")
                        search_txt_btn = gr.Button("Search", variant="primary")
                    with gr.Column(scale=2):
                        status_txt = gr.Markdown()
                        gallery_txt = gr.Gallery(label="Matching radiographs", columns=4, height=420, object_fit="contain")
                        reports_txt = gr.HTML()
                        with gr.Accordion("Results as JSON", open=False):
                            json_txt = gr.JSON()
            from webapp.extras import ExtrasService
            from webapp.extras_ui import build_compose_tab

            build_compose_tab(ExtrasService(service), examples + phantom_examples)
            with gr.Tab("Embedding map", id="map") as map_tab:
                gr.Markdown("Each dot is an indexed study (green normal, red abnormal); hover for its impression. "
                            "The star is your last query, placed among its nearest studies.")
                from model.embedding_map import METHODS  # maps computed after start-up arrive later

                method = gr.Radio(service.maps.methods if service.maps else list(METHODS),
                                  value=(service.maps.methods[0] if service.maps else METHODS[0]),
                                  label="Projection")
                with gr.Row():
                    plot_frozen = gr.Plot(label="Frozen backbone")
                    plot_tuned = gr.Plot(label="Fine-tuned head")
            with gr.Tab("Model", id="model"):
                gr.Markdown(model_card(service))
        img_inputs = [upload, k_img, label_img, view_img, finding_img]
        img_outputs = [preview, gallery_img, reports_img, probability, status_img, json_img, query_state]
        from webapp.trust import verdict_of

        from webapp.pacs import UidQuery, with_viewer_links

        linked_image = with_viewer_links(service.search_image, viewer_url, html_at=(2,), records_at=5)
        image_answer = serving.gallery_outputs(linked_image)  # gallery images: copies staged in the temp folder
        text_answer = serving.gallery_outputs(with_viewer_links(text_search or service.search_text, viewer_url, html_at=(1,),
                                                                records_at=3))
        txt_outputs = [gallery_txt, reports_txt, status_txt, json_txt, query_state]
        txt_inputs = [text, k_txt, label_txt, view_txt, finding_txt, side_txt, mode_txt]  # mode last: API callers
        image_verdict = (lambda a, out: verdict_of(out[5]), verdict_img)  # the badge beside the preview
        if pacs_source is not None:  # a StudyInstanceUID: its frontal image over WADO-RS, searched like an upload
            uid_answer = serving.gallery_outputs(UidQuery(linked_image, pacs_source).search)
            search_events(uid_answer, [study_uid, *img_inputs[1:]], img_outputs, "search_study_uid", [study_uid.submit],
                          image_verdict)
        search_events(image_answer, img_inputs, img_outputs, "search_image", [search_img_btn.click, upload.upload],
                      image_verdict)
        search_events(text_answer, txt_inputs, txt_outputs, "search_text", [search_txt_btn.click, text.submit],
                      (lambda a, out: verdict_of(out[3]), verdict_txt), (lambda a, out: chips_html(a[0], a[6]), chips_txt))
        serving.add_noop_endpoint()  # issue 26: bench.serving's measure of gradio's own cost per call
        # issue 26: the map is drawn when its tab is opened (with the last query's star), not on every
        # query: two 3,955-point figures per search cost more than the search itself
        for trigger in (method.change, map_tab.select, demo.load):
            trigger(service.map_figures, [method, query_state], [plot_frozen, plot_tuned], api_visibility="private")
    return demo


def search_events(fn, inputs: list, outputs: list, name: str, page_triggers: list, *extras: tuple) -> None:
    """One search's events (issue 26): the named endpoint for scripts (its search outputs, on a hidden button) and
    the page's triggers, which answer each ``extras`` (``(fn(args, outputs), component)``: the verdict badge, the
    parse chips) in the same event instead of chained ``.then`` round trips. Inputs and outputs are processed in
    the handler's thread (``serving.on``)."""
    import gradio as gr

    serving.on(gr.Button(visible=False, elem_id=f"api-{name}").click, fn, inputs, outputs, api_name=name)
    page = serving.with_extra_outputs(fn, *(extra for extra, _ in extras))
    page_outputs = [*outputs, *(component for _, component in extras)]
    for trigger in page_triggers:
        serving.on(trigger, page, inputs, page_outputs, api_visibility="private")


def search_workers(service, args: argparse.Namespace):
    """Worker processes for text search (webapp.search_workers), or None for in-process search."""
    from runtime.threads import available_cores
    from webapp.loading import load_worker_service
    from webapp.search_workers import SearchWorkers

    n = args.search_workers if args.search_workers is not None else (DEFAULT_SEARCH_WORKERS if available_cores() >= 2 else 0)
    if n <= 0:
        return None
    run, index = service.loaded_from  # what the app loaded: the demo is never rebuilt, a bundle never re-verified
    if index.startswith("milvus://"):
        log.info("search workers: none for a Milvus index (its searches run in Milvus; one client per app)")
        return None
    args = argparse.Namespace(**{**vars(args), "run": run, "index": index, "bundle": None})
    return SearchWorkers(service, n, load_worker_service, args)


def pacs_options(args: argparse.Namespace) -> tuple:
    """(PacsSource or None, viewer URL template or None) from --dicomweb/--viewer-url; bad ones fail in one line."""
    from data.dicomweb import PacsSource
    from webapp.pacs import check_template

    try:
        viewer = check_template(args.viewer_url)
        return (PacsSource(args.dicomweb, auth_file=args.dicomweb_auth_file) if args.dicomweb else None), viewer
    except LOAD_ERRORS as exc:
        raise SystemExit(one_line(exc)) from None


def model_card(service) -> str:
    from model.checkpoint import run_option
    from evaluation.tables import format_table

    cfg = service.run.config
    weights = cfg.get("loss_weights", {})
    lines = [
        "## Loaded model",
        f"- **Backbone:** `{cfg.get('backbone_name')}` (`{cfg.get('backbone_id')}`), frozen",
        f"- **Head:** {json.dumps(cfg.get('head', {}))}",
        f"- **Loss:** `{run_option(cfg, 'loss')}` — weights " + ", ".join(f"{k} = {v:g}" for k, v in weights.items())
        + f"; SupCon positives: {run_option(cfg, 'supcon_labels', 'binary')} (`findings`: weighted by shared findings and side)",
        f"- **Trained on:** `{cfg.get('data')}` (data version `{cfg.get('data_version')}`, split `{cfg.get('split_hash')}`)",
        f"- **Index:** {service.engine.count:,} studies, hnswlib M={service.engine.manifest.M}, ef={service.engine.manifest.ef}",
        "",
    ]
    report = service.run.eval_report
    if report.get("models"):
        level = f", {report['split_level']}-level" if report.get("split_level") else ""
        lines += [f"## Evaluation on the held-out test split ({report.get('n_test')} studies{level})",
                  "", format_table(report), "",
                  "nDCG@10: graded by shared findings and their side (data.findings). finding_P@10: share of the "
                  "top 10 sharing a finding on a non-contradicting side (normal matches normal). R@K: the paired "
                  "report/image is in the top K. P@K and mAP: the normal/abnormal label only. Chance = random "
                  "ranking; ceiling = ranking by true relevance."]
        if report.get("phrase_benchmark"):
            from evaluation.tables import format_phrase_table

            lines += ["", "### Findings-phrase benchmark (typed phrase -> test images)", "", format_phrase_table(report)]
        for name, note in report.get("notes", {}).items():
            lines.append(f"\n*{name}:* {note}")
    if str(cfg.get("data", "")).startswith("demo"):
        lines += ["", "> The offline demo indexes synthetic phantoms rendered from the findings of 3,955 real IU X-ray "
                  "reports (images are not real radiographs). Figures on it measure the pipeline, not clinical accuracy."]
    lines += ["", DISCLAIMER]
    return "\n".join(lines)


def phantom_examples(service, n: int = 2) -> list[str]:
    picks = []
    for finding in ("pleural effusion", "cardiomegaly"):
        ids = service.engine.store.matching_ids(finding=finding)
        if len(ids):
            path = service.engine.resolve_path(service.engine.store.get([int(ids[0])])[0].image_path)
            if Path(path).is_file():  # an index moved without its images still serves, minus examples
                picks.append(path)
    return picks[:n]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        options = serving.launch_options(args)
    except REPORTED as exc:  # a bad --auth-file or --max-upload-mb: one line
        raise SystemExit(one_line(exc)) from None
    problem = hosting.port_problem(args.host, args.port)
    if problem:
        raise SystemExit(f"app.py: {problem}")
    temp_dir = serving.make_temp_dir()  # removed at exit; stale ones of earlier runs swept now
    log.info("temp folder %s", temp_dir)
    t0 = time.time()
    from webapp.startup import ProgressServer, first_start, maps_later

    # First start of the demo: a progress page at once, search when the index is ready, maps after.
    progress = ProgressServer.start(args.host, args.port) if first_start(args) else None
    from runtime.threads import configure_serving

    apply_runtime_argument(args)
    configure_serving(args.concurrency)  # then each query takes its share of the cores (runtime.threads.query_threads)
    try:
        service = load_service(args, train_args=["--no-maps"] if progress else None)
    except LOAD_ERRORS as exc:  # bad or mismatched run/index folders, unavailable weights: one line
        if progress:
            progress.close()
        raise SystemExit(one_line(exc)) from None
    workers = search_workers(service, args)
    examples = example_uploads()
    phantoms = phantom_examples(service)
    demo = build_ui(service, examples, phantoms, *pacs_options(args), text_search=workers and workers.search_text_async)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=64)
    import gradio as gr

    if progress:
        progress.handover()
    if not (args.run or args.bundle):
        maps_later(service, service.run.run_dir)
    log.info("ready in %.1fs", time.time() - t0)
    from webapp.text_query import CSS as CHIPS_CSS
    from webapp.trust import CSS as VERDICT_CSS

    serving.serve(demo, on_exit=[workers.close] if workers else (), **options,
                  allowed_paths=serving.served_examples(examples + phantoms),  # nothing else as-is
                  theme=gr.themes.Soft(), css=CSS + VERDICT_CSS + CHIPS_CSS)


if __name__ == "__main__":
    main()
