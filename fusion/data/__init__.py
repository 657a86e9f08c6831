"""Data layer: the only part of `fusion` that reads or writes nuScenes tables and files."""
