"""Shared by the analysis scripts: write a result JSON file whole or not at all."""

import json
import os


def write_atomically(path, obj):
    """Writes `obj` as indented JSON to `path` through a temporary file renamed into place."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
