"""The layouts, one module each; importing them registers them in detection order (the first whose `detect` says
yes is the competition's layout; `--layout NAME` picks one).

A new layout is one module here (a pipeline.data.layout.Layout subclass that calls `register`) and one line below.
A layout module imports no other layout module, except one listed before it that it extends (class-folders
extends csv-images), so the order below is the registry's.
"""
from pipeline.data.layouts import speakers, frames, sequences  # noqa: F401  files only they have: first
from pipeline.data.layouts import arrays, idx  # noqa: F401
from pipeline.data.layouts import pixels, table, csv_images, class_folders  # noqa: F401
