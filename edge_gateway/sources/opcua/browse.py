"""``edge-gateway browse opc.tcp://host:port``: walk a server's address space from the Objects folder and
print the variables found as a ``sources[]`` entry (YAML) a person can paste into the config.

Contract: hierarchical references only, at most ``--depth`` levels below Objects (default 4), the
standard Server object skipped; each variable becomes ``{alias, node_id}`` with the node id in its
``nsu=<namespace URI>;…`` form (stable when the server renumbers its namespaces) and the alias built
from the browse names; the data type is given as a comment. Security as for a source (``--security
Policy,Mode``, ``--cert-dir``, ``--trust-dir``, ``--trust-on-first-use``, ``--user`` with the password
from ``--password-file`` or ``--password-env``). Exit 0 with the snippet on stdout, 1 when the server
cannot be read (reason on stderr), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError
from pydantic import ValidationError

from edge_gateway.sources.opcua.config import OpcUaAuth, OpcUaSecurity
from edge_gateway.sources.opcua.security import SecuritySetupError, secure

_ALIAS_BAD = re.compile(r"[^A-Za-z0-9_.:\-/]+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoint", help="opc.tcp://host:port[/path]")
    parser.add_argument("--depth", type=int, default=4, help="levels below the Objects folder (default 4)")
    parser.add_argument("--name", default="plc", help="the source name in the snippet (default plc)")
    parser.add_argument(
        "--security", default="None", help="None, or Policy,Mode e.g. Basic256Sha256,SignAndEncrypt (default None)"
    )
    parser.add_argument("--cert-dir", type=Path, default=Path("opcua-pki"), help="client certificate (kept)")
    parser.add_argument("--trust-dir", type=Path, default=None, help="trusted server certificates")
    parser.add_argument("--trust-on-first-use", action="store_true", help="trust a new server's certificate")
    parser.add_argument("--user", default=None)
    parser.add_argument("--password-file", type=Path, default=None)
    parser.add_argument("--password-env", default=None)
    parser.add_argument("--timeout-s", type=float, default=10.0)


def _settings(args: argparse.Namespace) -> tuple[OpcUaSecurity, OpcUaAuth | None]:
    mode, policy = "None", "Basic256Sha256"
    if args.security != "None":
        policy, _, mode = args.security.partition(",")
    security = OpcUaSecurity.model_validate(
        {
            "mode": mode,
            "policy": policy,
            "cert_dir": args.cert_dir,
            "trust_dir": args.trust_dir,
            "trust_on_first_use": args.trust_on_first_use,
        }
    )
    auth = None
    if args.user is not None:
        auth = OpcUaAuth.model_validate(
            {"username": args.user, "password_file": args.password_file, "password_env": args.password_env}
        )
    return security, auth


async def _walk(client: Client, depth: int) -> list[tuple[list[str], str, str]]:
    """(browse names from Objects, node id as nsu= string, data type name) of every variable."""
    namespaces = list(await client.get_namespace_array())
    found: list[tuple[list[str], str, str]] = []
    seen: set[ua.NodeId] = set()
    server_node = ua.NodeId(ua.Int32(ObjectIds.Server))

    async def visit(node: Node, names: list[str], level: int) -> None:
        refs = await node.get_references(refs=ObjectIds.HierarchicalReferences, direction=ua.BrowseDirection.Forward)
        for ref in refs:
            nid = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
            if nid in seen or nid == server_node:
                continue
            seen.add(nid)
            path = [*names, ref.BrowseName.Name or str(nid.Identifier)]
            child = client.get_node(nid)
            if ref.NodeClass == ua.NodeClass.Variable:
                try:
                    vtype = (await child.read_data_type_as_variant_type()).name
                except (UaError, ValueError):
                    vtype = "?"
                found.append((path, _stable_id(nid, namespaces), vtype))
            elif ref.NodeClass == ua.NodeClass.Object and level < depth:
                await visit(child, path, level + 1)

    await visit(client.nodes.objects, [], 1)
    return found


def _stable_id(nid: ua.NodeId, namespaces: list[str]) -> str:
    text = nid.to_string()
    if nid.NamespaceIndex == 0 or nid.NamespaceIndex >= len(namespaces):
        return text
    return f"nsu={namespaces[nid.NamespaceIndex]};{text.split(';', 1)[1]}"


def _alias(names: list[str], used: set[str]) -> str:
    alias = ".".join(_ALIAS_BAD.sub("_", n).strip("_") or "x" for n in names).lower()[:120]
    base, n = alias, 2
    while alias in used:
        alias, n = f"{base}.{n}", n + 1
    used.add(alias)
    return alias


def snippet(name: str, endpoint: str, variables: list[tuple[list[str], str, str]], extra: dict[str, Any]) -> str:
    used: set[str] = set()
    nodes = [{"alias": _alias(names, used), "node_id": nid} for names, nid, _ in variables]
    doc = {"sources": [{"type": "opcua", "name": name, "endpoint": endpoint, **extra, "nodes": nodes}]}
    text = yaml.safe_dump(doc, sort_keys=False, width=200)
    types = {nid: vtype for _, nid, vtype in variables}
    out = [f"# {len(nodes)} variable(s) found at {endpoint}"]
    for line in text.splitlines():
        match = re.search(r"node_id: (.+)$", line)
        nid = yaml.safe_load(match.group(1)) if match else None
        out.append(f"{line}  # {types[nid]}" if nid in types else line)
    return "\n".join(out) + "\n"


async def _browse(args: argparse.Namespace, security: OpcUaSecurity, auth: OpcUaAuth | None) -> str:
    client = Client(args.endpoint, timeout=args.timeout_s)
    await secure(client, args.endpoint, security, auth)
    async with client:
        variables = await _walk(client, args.depth)
    extra: dict[str, Any] = {}
    if security.mode != "None":
        extra["security"] = {"mode": security.mode, "policy": security.policy, "cert_dir": str(security.cert_dir)}
    if auth is not None:
        extra["auth"] = {"username": auth.username} | (
            {"password_file": str(auth.password_file)} if auth.password_file else {"password_env": auth.password_env}
        )
    return snippet(args.name, args.endpoint, variables, extra)


def run(args: argparse.Namespace) -> int:
    if not str(args.endpoint).startswith("opc.tcp://") or args.depth < 1:
        sys.stderr.write("browse: the endpoint must start with opc.tcp:// and --depth must be at least 1" + "\n")
        return 2
    try:
        security, auth = _settings(args)
    except ValidationError as exc:
        sys.stderr.write(f"browse: {exc}" + "\n")
        return 2
    try:
        text = asyncio.run(_browse(args, security, auth))
    except SecuritySetupError as exc:
        sys.stderr.write(f"browse: {exc}" + "\n")
        return 1
    except (OSError, TimeoutError, UaError) as exc:
        sys.stderr.write(f"browse {args.endpoint}: {type(exc).__name__}: {exc}" + "\n")
        return 1
    sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-gateway browse", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
