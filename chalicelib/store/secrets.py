"""Secrets at rest: a deployment's env var values and its weights URL's query string (where a
signed URL keeps its signature: X-Amz-Signature=…, token=…) are never stored in plaintext.

Envelope encryption: KMS GenerateDataKey under the template's key (infra/resources.json
SecretsKey) gives a fresh AES-256 key per deployment, in plaintext and encrypted; the secrets
are sealed with AES-256-GCM under it, the deployment id as associated data (and as the KMS
encryption context, so a data key opens only its own deployment's blob), and only the
encrypted data key is kept (SecretItem). KMS alone could seal at most 4 KB; env vars may take
96 KB. Opening needs kms:Decrypt on that key, which only the functions that send `deploy_model`
or launch an image hold; the API function may seal but never open.

The item and its secret are written in one transaction (no secret without its deployment) and
the secret is deleted in the transaction that ends the deployment (store/deployments.py).
"""

import json
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.errors import Conflict
from chalicelib.store.models import DeploymentItem, SecretItem

FORMAT = 1  # of the sealed JSON


class SecretsMissing(Conflict):
    """A deployment says it has sealed secrets and the secrets table has none."""


@dataclass(frozen=True)
class DeploymentSecrets:
    env: dict[str, str] = field(default_factory=dict)
    weights_query: str | None = None  # without the "?"

    def __bool__(self) -> bool:
        return bool(self.env) or bool(self.weights_query)

    def weights_source(self, stored: str | None) -> str | None:
        """The weights source as the user gave it: the stored one with its query put back."""
        if not stored or not self.weights_query:
            return stored
        return urlsplit(stored)._replace(query=self.weights_query).geturl()


def split_weights_source(source: str | None) -> tuple[str | None, str | None]:
    """(what may be stored and shown, the query string to seal). Only an http(s) URL has a
    query; hf://, r2://, s3:// and local paths are kept as they are."""
    if not source or urlsplit(source).scheme.lower() not in ("http", "https"):
        return source, None
    parts = urlsplit(source)
    if not parts.query:
        return (parts._replace(query="").geturl() if "?" in source else source), None
    return parts._replace(query="").geturl(), parts.query


def public_weights_source(source: str | None) -> str | None:
    """How a weights source is shown: never with its query (an item older than sealed secrets
    may still store it)."""
    return split_weights_source(source)[0]


def _context(deployment_id: str) -> dict[str, str]:
    return {"prism:deployment_id": deployment_id}


class SecretStore:
    """Seals and opens deployments' secrets (KMS + the secrets table)."""

    def __init__(self, key_id: str | None = None):
        self._key_id = key_id or settings.secrets_key_id

    def seal(self, deployment_id: str, secrets: DeploymentSecrets) -> SecretItem:
        """The sealed item, not written yet: DeploymentRepository.create writes it with the
        deployment."""
        key = aws.client("kms").generate_data_key(
            KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=_context(deployment_id)
        )
        payload = {"format": FORMAT, "env": secrets.env, "weights_query": secrets.weights_query}
        nonce = os.urandom(12)
        ciphertext = AESGCM(key["Plaintext"]).encrypt(
            nonce, json.dumps(payload).encode(), deployment_id.encode()
        )
        return SecretItem(
            deployment_id=deployment_id,
            key_id=key["KeyId"],
            data_key=key["CiphertextBlob"],
            nonce=nonce,
            ciphertext=ciphertext,
        )

    def open(self, item: DeploymentItem) -> DeploymentSecrets:
        """Its env vars and weights query; an item older than sealed secrets gives its plaintext
        (and makes no AWS call, as one with no secrets)."""
        if not item.has_sealed_secrets():
            legacy_query = split_weights_source(item.weights_source)[1]
            return DeploymentSecrets(item.legacy_env(), legacy_query)
        try:
            sealed = SecretItem.get(item.id, consistent_read=True)
        except SecretItem.DoesNotExist:
            raise SecretsMissing(
                f"the secrets of deployment {item.id} are gone (it ended, or was never written)"
            ) from None
        key = aws.client("kms").decrypt(
            CiphertextBlob=sealed.data_key, KeyId=sealed.key_id, EncryptionContext=_context(item.id)
        )
        payload = json.loads(
            AESGCM(key["Plaintext"]).decrypt(sealed.nonce, sealed.ciphertext, item.id.encode())
        )
        return DeploymentSecrets(dict(payload["env"]), payload.get("weights_query"))
