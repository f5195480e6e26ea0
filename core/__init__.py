"""corral's engine: VCS backends, process supervision, agent profiles, the runtime and the plan pipeline.

Nothing under this package imports Textual (tests/test_layering.py checks it).
"""

__version__ = "0.1.0"
