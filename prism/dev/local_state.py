"""What the local platform keeps between runs, in its state dir (`.prism/` by default):

    aws/             the moto server's state (tables, IAM, SSM, queues): prism.dev.moto_state
    identities.json  each identity's role and keys (prism.dev.identities)
    dev-user.json    the dev user and its API key, so the CLI config stays valid
    node/            the local node agent's state (its token, the models it runs)
    logs/            every process's log, and functions/<name>.log for each function

All of it owner-only. `prism dev up --fresh` deletes everything but the logs."""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalState:
    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def aws(self) -> Path:
        return self.root / "aws"

    @property
    def identities(self) -> Path:
        return self.root / "identities.json"

    @property
    def node(self) -> Path:
        return self.root / "node"

    @property
    def _user(self) -> Path:
        return self.root / "dev-user.json"

    def prepare(self, fresh: bool) -> None:
        if fresh:
            self.forget_node()
            shutil.rmtree(self.aws, ignore_errors=True)
            for file in (self.identities, self._user):
                file.unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.logs.mkdir(exist_ok=True)

    def forget_node(self) -> None:
        """Delete the local node's state, after stopping the models it still records (after a
        kill -9 they outlive it; with their record gone nothing would ever stop them)."""
        from node_agent.runtime.process import ProcessRuntime
        from node_agent.state import StateStore

        runtime = ProcessRuntime()
        for record in StateStore(self.node / "state.json").load().values():
            if record.handle is not None and record.handle.runtime == runtime.name:
                runtime.stop(record.handle, grace_seconds=5)
        shutil.rmtree(self.node, ignore_errors=True)

    def saved_user(self) -> dict | None:
        return json.loads(self._user.read_text()) if self._user.exists() else None

    def save_user(self, user: dict) -> None:
        fd = os.open(self._user, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(user, handle)
