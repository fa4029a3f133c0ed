"""The clinician-facing Gradio app's logic: formatting, plots, the offline bootstrap and the
event handlers. ``app.py`` only lays out the page and starts the server."""
