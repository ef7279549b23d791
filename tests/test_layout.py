"""Imports point down (shared/DESIGN.md): a module imports only modules below it in LAYERS, also inside functions."""
import ast
from pathlib import Path

import har_colab

# bottom first; a new module takes its place here (the test fails for a module that has none)
LAYERS = ["core", "events", "env", "distributed", "video", "datasets", "transforms", "cache", "clips", "synthetic",
          "prepare", "models", "models_hf", "checkpoint", "plots", "config", "build", "doctor", "callbacks", "train",
          "experiments", "predict", "cli"]
# the only import that points up, on purpose: `models` ends by importing the Hugging Face specs' module so that
# `from har_colab.models import list_models` lists every model (models_hf imports only models and core)
PLUGINS = {("models", "models_hf")}


def imported_modules(path: Path) -> set:
    "The har_colab modules a file imports (module level and inside functions)."
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: found.add(node.module.split(".")[0])
            elif node.level == 1: found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("har_colab."): found.add(node.module.split(".")[1])
            elif node.module == "har_colab": found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("har_colab."))
    return found


def test_every_module_has_a_layer_and_imports_only_lower_ones():
    pkg = Path(har_colab.__file__).parent
    modules = {p.stem: p for p in pkg.glob("*.py") if not p.stem.startswith("_")}
    assert not set(modules) - set(LAYERS), f"add {sorted(set(modules) - set(LAYERS))} to LAYERS (where they belong)"
    upward = [f"{m} imports {other}" for m, p in modules.items() for other in sorted(imported_modules(p))
              if other in LAYERS and LAYERS.index(other) >= LAYERS.index(m) and (m, other) not in PLUGINS]
    assert not upward, "; ".join(upward)
