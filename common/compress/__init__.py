"""From a federated teacher to a deployable model: pruning, int8, low rank, distillation.

Each step is a function from a module to a smaller one (prune.py, quantize.py,
lowrank.py, student.py); recipes.py composes them and measure.py measures the result
end to end on raw text. ``fedistill compress`` (simulations/compress_cli.py) runs it on
a finished run; docs/COMPRESSION.md has a measured table.
"""

from common.compress.measure import LatencySettings
from common.compress.recipes import CompressConfig, parse_recipe, run_recipes
from common.compress.student import DistilSettings
from common.compress.subject import Subject

__all__ = ["CompressConfig", "DistilSettings", "LatencySettings", "Subject", "parse_recipe",
           "run_recipes"]
