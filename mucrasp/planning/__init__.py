"""Hardware profiles, the weight-format catalogue, the memory and throughput models, and the (format, ratio)
planner: config in, plan out."""

from mucrasp.planning.planner import (
    Plan,
    PlanRow,
    plan_all_profiles,
    plan_for_config,
    plan_model,
    predict_export_memory,
)
from mucrasp.planning.profiles import Profile, list_profiles, load_profile
from mucrasp.planning.workload import Workload

__all__ = [
    "Plan",
    "PlanRow",
    "Profile",
    "Workload",
    "list_profiles",
    "load_profile",
    "plan_all_profiles",
    "plan_for_config",
    "plan_model",
    "predict_export_memory",
]
