"""Version, orientation and density constants shared by every part of the renderer.

``PHANTOM_VERSION`` is the renderer's version: bump it with every intended pixel change and rewrite
the golden hashes (``python -m data.phantom.golden --write``); it is part of the demo cache id.
"""
PHANTOM_VERSION = 1
DEFAULT_SIZE = 256

RIGHT, LEFT = "R", "L"
SIDES = (RIGHT, LEFT)
SIGN = {RIGHT: -1.0, LEFT: 1.0}  # image-x direction of the patient's side (PA view)
OTHER = {RIGHT: LEFT, LEFT: RIGHT}
MIDLINE = 0.5
AIR = 0.66  # density removed by fully aerated lung
REF_DENSITY = 2.0  # density mapped to white before windowing
DENSIFY = 6  # sub-steps per vessel growth step

# Blur widths of the stroke layers, in pixels at 256 px (scaled with the output size).
FINE, LINE, VESSEL, RIB, SOFT = 0.65, 0.9, 1.15, 2.0, 2.6
