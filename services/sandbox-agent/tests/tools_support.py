"""Helpers of the tool tests: SchemaPin keys and trust bundles, the toolbox MCP server's registration, and
the image that runs it in a sandbox container."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from schemapin.bundle import SchemaPinTrustBundle, create_bundled_discovery
from schemapin.crypto import KeyManager
from schemapin.revocation import RevocationReason, add_revoked_key, build_revocation_document
from schemapin.utils import create_well_known_response
from symbi_contracts.tools.events import ToolServerRegistered

TOOLBOX = Path(__file__).parent / "mcp_servers" / "toolbox.py"
DOMAIN = "tools.example.com"


def keypair() -> tuple[str, str]:
    """(private PEM, public PEM) of a fresh P-256 key."""
    private, public = KeyManager.generate_keypair()
    return KeyManager.export_private_key_pem(private), KeyManager.export_public_key_pem(public)


def bundle(public_pem: str, domain: str = DOMAIN, *, revoked: bool = False) -> SchemaPinTrustBundle:
    docs = [create_bundled_discovery(domain, create_well_known_response(public_pem, "Example Tools"))]
    revocations = []
    if revoked:
        doc = build_revocation_document(domain)
        add_revoked_key(doc, KeyManager.calculate_key_fingerprint_from_pem(public_pem), RevocationReason.KEY_COMPROMISE)
        revocations.append(doc)
    return SchemaPinTrustBundle("1.2", "2026-01-01T00:00:00Z", docs, revocations)


def local_server(server: str, domain: str = DOMAIN, **env: str) -> ToolServerRegistered:
    """The toolbox run as a child process (``ToolService(local=True)``)."""
    return ToolServerRegistered(
        server=server, transport="stdio", command=(sys.executable, str(TOOLBOX)), domain=domain, env=env
    )


# --- the toolbox in a container ------------------------------------------------------------------------


def _closure(names: list[str]) -> list[md.Distribution]:
    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.split(r"[ ;<>=!~\[]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return list(seen.values())


def toolbox_image(base: str) -> str:
    """An image with the toolbox, ``mcp`` and ``schemapin`` (this environment's installed files) on top of
    ``base`` (the agent image: this host's Python); built once per content. Returns its id (sha256:…)."""
    dists = _closure(["mcp", "schemapin"])
    digest = hashlib.sha256(TOOLBOX.read_bytes() + base.encode())
    for dist in sorted(dists, key=lambda d: d.metadata["Name"]):
        digest.update(f"{dist.metadata['Name']}=={dist.version}".encode())
    tag = f"symbi/mcp-toolbox:{digest.hexdigest()[:12]}"
    found = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True)
    if found.returncode == 0:
        return found.stdout.strip()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for dist in dists:
            for file in dist.files or []:
                path = Path(str(dist.locate_file(file)))
                if path.is_file() and "__pycache__" not in file.parts and not str(file).startswith(".."):
                    tar.add(path, arcname=f"site/{file}")
        tar.add(TOOLBOX, arcname="toolbox.py")
        dockerfile = (
            f"FROM {base}\nCOPY site /opt/site\nCOPY toolbox.py /opt/toolbox.py\n"
            "ENV PYTHONPATH=/opt/site PYTHONDONTWRITEBYTECODE=1\n"
        ).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=context.getvalue(), check=True, capture_output=True)
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()
