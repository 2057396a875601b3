"""How often the agent reports to the control plane, by default; the CLI's flags show these, so
this module imports nothing."""

# Each endpoint's request counts (deployment_metrics), while they change. Each report is a
# Lambda invocation and a write of the deployment item and its index entries: at 15 s they were
# two thirds of the control plane's DynamoDB writes (benchmarks/scale.py).
METRICS_INTERVAL_S = 60.0
