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

    def start_provision(self, deployment_id: str) -> None:
        self._start(
            self._cloud.provision_state_machine_arn,
            f"provision-{deployment_id}",
            {"deployment_id": deployment_id, "wait_seconds": self._cloud.poll_seconds},
        )

    def start_teardown(self, deployment_id: str, attempt: int = 0) -> None:
        """`attempt` > 0 when the reaper restarts a teardown that gave up."""
        self._start(
            self._cloud.teardown_state_machine_arn,
            f"teardown-{deployment_id}-{attempt}",
            {"deployment_id": deployment_id, "retry_seconds": self._cloud.terminate_retry_seconds},
        )

    def provision_started(self, deployment_id: str) -> bool:
        """Whether this deployment's provision execution exists (running or finished)."""
        machine = self._cloud.provision_state_machine_arn
        execution = machine.replace(":stateMachine:", ":execution:") + f":provision-{deployment_id}"
        try:
            self._sfn.describe_execution(executionArn=execution)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ExecutionDoesNotExist":
                return False
            raise
        return True

    def _start(self, machine_arn: str, name: str, state: dict) -> None:
        try:
            self._sfn.start_execution(
                stateMachineArn=machine_arn, name=name, input=json.dumps(state)
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ExecutionAlreadyExists":
                raise
        logger.info("workflow started", extra={"execution": name})
