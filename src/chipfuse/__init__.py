"""chipfuse: an open software stack for AI chiplets.

Data flow: system spec + model -> IR -> quantize -> compile (plan) -> simulate | execute.
"""

__version__ = "0.1.0"
