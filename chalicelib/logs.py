"""The structured JSON logger (Powertools) every Lambda shares."""

from aws_lambda_powertools import Logger

logger = Logger(service="prism")
