"""Helpers of the tool tests: SchemaPin keys and trust bundles, the toolbox MCP server's registration, and
the image that runs it in a sandbox container."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tempfile
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


def _shared_libraries(site: Path) -> dict[str, Path]:
    """The host libraries the extension modules under ``site`` link (libgcc_s, librt, …) but the C library."""
    found: dict[str, Path] = {}
    for module in site.rglob("*.so*"):
        out = subprocess.run(["ldd", str(module)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split("=>")
            if len(parts) == 2 and parts[1].strip().startswith("/"):
                lib = Path(parts[1].split()[0])
                if not lib.name.startswith(("libc.so", "ld-linux")):
                    found[lib.name] = lib.resolve()
    return found


def toolbox_image(base: str) -> str:
    """An image with the toolbox, ``mcp`` and ``schemapin`` (this environment's installed files) on top of
    ``base`` (the agent image: this host's Python); built once per content. Returns its id (sha256:…)."""
    dists = _closure(["mcp", "schemapin"])
    digest = hashlib.sha256(Path(__file__).read_bytes() + TOOLBOX.read_bytes() + base.encode())
    for dist in sorted(dists, key=lambda d: d.metadata["Name"]):
        digest.update(f"{dist.metadata['Name']}=={dist.version}".encode())
    tag = f"symbi/mcp-toolbox:{digest.hexdigest()[:12]}"
    found = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True)
    if found.returncode == 0:
        return found.stdout.strip()
    with tempfile.TemporaryDirectory(prefix="symbi-toolbox-") as tmp:
        root = Path(tmp)
        for dist in dists:
            for file in dist.files or []:
                path = Path(str(dist.locate_file(file)))
                if path.is_file() and "__pycache__" not in file.parts and ".." not in file.parts:
                    target = root / "site" / file
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
        shutil.copyfile(TOOLBOX, root / "toolbox.py")
        (root / "lib").mkdir()
        for name, lib in _shared_libraries(root / "site").items():
            shutil.copyfile(lib, root / "lib" / name)
        (root / "Containerfile.symbi").write_text(
            f"FROM {base}\nCOPY site /opt/site\nCOPY toolbox.py /opt/toolbox.py\nCOPY lib /opt/lib\n"
            "ENV PYTHONPATH=/opt/site LD_LIBRARY_PATH=/opt/lib PYTHONDONTWRITEBYTECODE=1\n"
        )
        build = ["docker", "build", "-q", "-f", str(root / "Containerfile.symbi"), "-t", tag, str(root)]
        subprocess.run(build, check=True, capture_output=True)
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()
