"""Shared test setup. AWS credentials are fake everywhere; nothing here reaches the internet.

Also the IAM audit (tests/iam_audit.py): every AWS call the app makes in this session is
recorded, per xdist worker, and at the end evaluated against .chalice/policy-dev.json for the
test stage; a call the policy does not grant fails the run, naming the call and its test.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SECURITY_TOKEN="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    PRISM_STAGE="test",
    POWERTOOLS_LOG_LEVEL="WARNING",
)
os.environ.pop("PRISM_AWS_ENDPOINT_URL", None)

from tests import iam_audit  # noqa: E402 - after the environment above

AUDIT_DIR = "PRISM_IAM_AUDIT_DIR"  # where each process writes its calls (xdist workers inherit)
iam_audit.RECORDER.install()  # before any test module makes a client


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        os.environ[AUDIT_DIR] = tempfile.mkdtemp(prefix="prism-iam-audit-")


def pytest_sessionfinish(session, exitstatus):
    directory = Path(os.environ[AUDIT_DIR])
    worker = getattr(session.config, "workerinput", {}).get("workerid")
    iam_audit.RECORDER.dump(iam_audit.worker_file(directory, worker or "main"))
    if worker is not None:
        return  # the controller evaluates every worker's calls
    message = _audit(session, directory)
    shutil.rmtree(directory, ignore_errors=True)
    session.config.stash[_AUDIT_REPORT] = message
    if message.startswith("FAILED") and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_AUDIT_REPORT = pytest.StashKey[str]()


def _audit(session, directory: Path) -> str:
    files = sorted(directory.glob("calls-*.json"))
    distributed = session.config.pluginmanager.has_plugin("dsession")
    if distributed and session.testscollected and len(files) < 2:
        return "FAILED: no recorded calls came back from the xdist workers"
    calls = iam_audit.load_calls(files)
    policy = iam_audit.stage_policy(os.environ["PRISM_STAGE"])
    found = iam_audit.denials(policy, calls)
    if found:
        return "FAILED: " + iam_audit.report(found)
    services = ", ".join(sorted({call.service for call in calls})) or "none"
    return f"{len(calls)} distinct calls by the app ({services}), all granted by the policy"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    message = config.stash.get(_AUDIT_REPORT, None)
    if message:
        failed = message.startswith("FAILED")
        terminalreporter.write_sep("=", "IAM audit", red=failed, green=not failed)
        terminalreporter.write_line(message)
