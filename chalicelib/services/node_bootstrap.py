"""How a cloud instance becomes a node: our node agent (infra/node-agent/Dockerfile) starts on it
with a token for a node dedicated to the deployment, connects back over the WebSocket protocol,
and from then on the deployment proceeds exactly as on `prism node up`.

RunPod runs the agent image as the pod itself, configured by its environment; a Lambda VM runs
it from cloud-init user data (Docker and the NVIDIA container toolkit come installed there)."""

import shlex
from dataclasses import dataclass

STATE_DIR = "/var/lib/prism"  # the agent's state, logs and weights cache on the instance


@dataclass(frozen=True)
class AgentBootstrap:
    image: str
    token: str  # a secret: only ever in the instance's environment
    ws_url: str
    api_url: str | None
    name: str

    def env(self) -> dict[str, str]:
        """What `prism node up` reads from its environment (see prism/commands/node.py)."""
        env = {
            "PRISM_NODE_TOKEN": self.token,
            "PRISM_WS_URL": self.ws_url,
            "PRISM_NODE_NAME": self.name,
            "PRISM_NODE_STATE": STATE_DIR,
        }
        if self.api_url:
            env["PRISM_API_URL"] = self.api_url
        for key, value in env.items():
            if "\n" in value or "\r" in value:  # one line each in Docker's env-file
                raise ValueError(f"{key} must be a single line")
        return env

    def cloud_init(self) -> str:
        """User data for a VM: the token goes into a root-only env file, never onto a command
        line. PRISM_ROOT is empty on a real VM (the local fake VM runs it in a sandbox)."""
        env_file = "\n".join(f"{k}={v}" for k, v in sorted(self.env().items()))
        return f"""#!/bin/bash
# PRISM node bootstrap: run the node agent, which connects back to the control plane.
set -euo pipefail
root="${{PRISM_ROOT:-}}"
umask 077
mkdir -p "$root/etc/prism" "$root{STATE_DIR}"
cat > "$root/etc/prism/node.env" <<'PRISM_NODE_ENV'
{env_file}
PRISM_NODE_ENV
docker run -d --name prism-node-agent --restart unless-stopped --gpus all --network host \\
  -v "$root{STATE_DIR}:{STATE_DIR}" --env-file "$root/etc/prism/node.env" \\
  {shlex.quote(self.image)}
"""
