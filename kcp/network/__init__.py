"""The whole network: plans under one budget (or a uniform KT x CP rank), applied to a copy of the network,
fine-tuned, saved and exported to ONNX.

Quick start::

    from kcp import zoo
    from kcp.network import Budget, Session, network_data
    loaded = zoo.load_model("digits-cnn")
    session = Session(loaded, network_data(loaded))
    run = session.budget_run(Budget("compression", 30))   # run.plan, run.net (a new network), run.report
"""

from kcp.network.apply import apply_plan
from kcp.network.data import NetworkData, network_data
from kcp.network.finetune import FinetuneConfig, FinetuneResult, finetune
from kcp.network.plan import Budget, LayerPlan, Plan, PlanConfig, Planner, allocate, plan_network
from kcp.network.run import NetworkRun, RunSettings, Session

__all__ = ["Budget", "FinetuneConfig", "FinetuneResult", "LayerPlan", "NetworkData", "NetworkRun", "Plan",
           "PlanConfig", "Planner", "RunSettings", "Session", "allocate", "apply_plan", "finetune",
           "network_data", "plan_network"]
