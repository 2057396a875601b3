"""Starting the cloud state machines (infra/statemachines/*.asl.json). An execution is named
after its deployment, so starting one twice is harmless: Step Functions refuses the second."""

import json

from botocore.exceptions import ClientError

from chalicelib.config import CloudSettings
from chalicelib.logs import logger


class Workflows:
    def __init__(self, stepfunctions, cloud: CloudSettings):
        self._sfn = stepfunctions
        self._cloud = cloud

    def start_provision(self, deployment_id: str, attempt: int = 0) -> None:
        """`attempt` > 0 when the reaper restarts a provision whose execution is gone."""
        self._start(
            self._cloud.provision_state_machine_arn,
            f"provision-{deployment_id}" + (f"-{attempt}" if attempt else ""),
            {"deployment_id": deployment_id, "wait_seconds": self._cloud.poll_seconds},
        )

    def start_teardown(self, deployment_id: str, attempt: int = 0) -> None:
        """`attempt` > 0 when the reaper restarts a teardown that gave up."""
        self._start(
            self._cloud.teardown_state_machine_arn,
            f"teardown-{deployment_id}-{attempt}",
            {"deployment_id": deployment_id, "retry_seconds": self._cloud.terminate_retry_seconds},
        )

    def running_provisions(self) -> set[str]:
        """The deployments whose provision execution is running now (one List per 1,000)."""
        pages = self._sfn.get_paginator("list_executions").paginate(
            stateMachineArn=self._cloud.provision_state_machine_arn, statusFilter="RUNNING"
        )
        names = (execution["name"] for page in pages for execution in page["executions"])
        # provision-<deployment id>[-<attempt>]; deployment ids have no "-"
        return {name.removeprefix("provision-").split("-", 1)[0] for name in names}

    def _start(self, machine_arn: str, name: str, state: dict) -> None:
        try:
            self._sfn.start_execution(
                stateMachineArn=machine_arn, name=name, input=json.dumps(state)
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ExecutionAlreadyExists":
                raise
        logger.info("workflow started", extra={"execution": name})
