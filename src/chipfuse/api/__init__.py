"""The documented Python API: one function per user task, each returning a typed result (docs/python-api.md).

    from chipfuse import api
    p = api.plan("llama-2-7b", "talk-heavy-2die-pcie", precision="int4")
    print(p.prediction.decode_tokens_per_s)

The `chipfuse` command is a thin shell over these functions.
"""

from .core import (
                   alias_of,
                   calibrate,
                   cost,
                   load_model,
                   load_plan,
                   load_system,
                   open_device,
                   plan,
                   predict,
                   presets,
                   probe,
                   required_bandwidth_bytes_per_s,
                   run,
                   this_host_prediction,
)
from .explain import plot_memory, plot_roofline, plot_scaling, plot_trace, scaling, trace
from .explore import ExploreResult, TargetError, explore
from .finetuning import (
                   TARGETS,
                   FinetunePlan,
                   FinetuneResult,
                   LoraSpec,
                   MergeResult,
                   TrainPlanError,
                   TrainSpec,
                   finetune,
                   merge_adapter,
                   plan_finetune,
)
from .place import DemandError, PlaceResult, place, plot_placement
from .progress import Progress, Silent
from .quantize import mixed_precision, quantize_report
from .results import (
                   CalibrationReport,
                   FormatAccuracy,
                   LayerSensitivity,
                   MixedReport,
                   PresetList,
                   ProbeReport,
                   QuantizeReport,
                   RunResult,
                   ScalingReport,
                   ScalingRow,
                   TraceResult,
)
from .workload_run import StreamRow, WorkloadRun, run_workload

__all__ = ["alias_of", "calibrate", "cost", "load_model", "load_plan", "load_system", "open_device", "plan", "predict", "presets", "probe",
           "required_bandwidth_bytes_per_s", "run", "this_host_prediction", "mixed_precision", "quantize_report",
           "trace", "scaling", "plot_scaling", "plot_trace", "plot_roofline", "plot_memory", "explore", "ExploreResult", "finetune", "plan_finetune", "FinetunePlan", "FinetuneResult", "TrainSpec", "LoraSpec", "TARGETS", "merge_adapter", "MergeResult", "TrainPlanError", "TargetError", "place", "plot_placement", "PlaceResult", "DemandError", "run_workload", "WorkloadRun",
           "StreamRow",
           "Progress", "Silent", "CalibrationReport", "FormatAccuracy", "LayerSensitivity", "MixedReport",
           "PresetList", "ProbeReport", "QuantizeReport", "RunResult", "ScalingReport", "ScalingRow", "TraceResult"]
