"""The structured JSON logger and the CloudWatch metrics (EMF) every Lambda shares."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger(service="prism")
metrics = Metrics(namespace="PRISM", service="prism")
Unit = MetricUnit
