"""Visualisation: drawing boxes on images and bird's-eye views. Pure numpy/PIL; reads no dataset."""
