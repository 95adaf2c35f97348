"""chipfuse: an open software stack for AI chiplets.

Data flow: system spec + model -> IR -> quantize -> compile (plan) -> simulate | execute.
The Python API is `chipfuse.api` (`from chipfuse import api; api.plan(...)`); its functions are also
re-exported here (`chipfuse.run(...)`, `chipfuse.load_system(...)`), all but `plan`: `chipfuse.plan` is the
package of the Plan schema.
"""

__version__ = "0.1.0"

_API = ("alias_of", "calibrate", "load_model", "load_plan", "load_system", "open_device", "predict", "presets", "probe",
        "required_bandwidth_bytes_per_s", "run", "this_host_prediction", "mixed_precision", "quantize_report")


def __getattr__(name: str):
    """The API's functions, imported on first use (so `import chipfuse` stays light)."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'chipfuse' has no attribute {name!r}")
