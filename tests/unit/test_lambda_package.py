"""The Lambda deployment package is what runs: built with `chalice package`, its contents alone
(no dev dependency, no site-packages) import `app`, every chalicelib module, and every module any
of them names in an import statement, including imports inside functions."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from prism.dev.stack import chalice_package

REPO = Path(__file__).resolve().parents[2]

# Runs in `python -I -S`: the standard library and the unpacked package, nothing else.
CHECK = r"""
import ast, importlib, importlib.util, json, pkgutil, sys
from pathlib import Path

root = Path(sys.argv[1])
sys.path.insert(0, str(root))
import app  # noqa: F401 - what Lambda does first in every function

modules = ["app"]
import chalicelib
for info in pkgutil.walk_packages(chalicelib.__path__, "chalicelib."):
    importlib.import_module(info.name)
    modules.append(info.name)

named = set()
for path in [root / "app.py", *sorted((root / "chalicelib").rglob("*.py"))]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            named.add(node.module)
missing = sorted(name for name in named if importlib.util.find_spec(name) is None)
outside = sorted(
    name for name, module in sys.modules.items()
    if getattr(module, "__file__", None)
    and not module.__file__.startswith((str(root), sys.base_prefix))
)
print(json.dumps({"modules": modules, "named": sorted(named), "missing": missing,
                  "outside": outside}))
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("package")
    chalice_package("dev", out / "build")
    unpacked = out / "contents"
    with zipfile.ZipFile(out / "build" / "deployment.zip") as archive:
        archive.extractall(unpacked)
    return unpacked


def test_the_package_alone_imports_everything_the_control_plane_names(package):
    # A Lambda function's environment: its stage and region, no local endpoint.
    env = {"PATH": os.environ["PATH"], "AWS_REGION": "us-east-1", "PRISM_STAGE": "dev"}
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHECK, str(package)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["missing"] == [], f"not in the Lambda package: {report['missing']}"
    assert report["outside"] == [], f"imported from outside the package: {report['outside']}"
    # The check really covered the code: every service, provider and route, and what they use.
    assert {"chalicelib.services.cloud", "chalicelib.providers.runpod"} <= set(report["modules"])
    assert {"requests", "pynamodb.models", "aws_lambda_powertools"} <= set(report["named"])


def test_the_interpreter_without_the_package_sees_no_dependency(package):
    """The check above would prove nothing if `-I -S` still saw the dev venv."""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import requests"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "No module named 'requests'" in result.stderr
