#!/usr/bin/env python3
"""Start a Coder workspace from a chat service with the official Kubernetes Python client.

Creates a WorkspaceStartRequest and watches it until it is Ready or Failed. The pod's
ServiceAccount (or your kubeconfig user) needs RBAC to create, get and watch
workspacestartrequests.coder.com in the namespace; the built-in `edit` role has it.

    start_with_kubernetes.py --chat-id 9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11 [--namespace team-a]
    start_with_kubernetes.py --workspace alice/dev --timeout 600

Prints a summary of the request's final status (JSON) on stdout and each phase change on stderr.
Exit codes: 0 Ready, 1 Failed, 3 timed out.
"""

import argparse
import json
import sys

from kubernetes import client, config, watch

GROUP, VERSION, PLURAL = "coder.com", "v1alpha1", "workspacestartrequests"


def load_config() -> str:
    """Loads in-cluster credentials or the kubeconfig; returns the default namespace."""
    try:
        config.load_incluster_config()
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip()
    except config.ConfigException:
        config.load_kube_config()
        _, context = config.list_kube_config_contexts()
        return context["context"].get("namespace", "default")


def spec_for(args) -> dict:
    if args.chat_id:
        return {"chatId": args.chat_id}
    owner, _, name = args.workspace.partition("/")
    if name:
        return {"workspace": {"owner": owner, "name": name}}
    return {"workspace": {"id": args.workspace}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--chat-id", help="start the workspace bound to this Coder chat")
    target.add_argument("--workspace", help="workspace UUID or OWNER/NAME")
    p.add_argument("--namespace", help="namespace of the request (default: the current one)")
    p.add_argument("--timeout", type=int, default=600, help="seconds to wait")
    args = p.parse_args()

    namespace = args.namespace or load_config()
    if args.namespace:
        load_config()
    api = client.CustomObjectsApi()

    # 1. Create the request; the API server picks a unique name from generateName.
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkspaceStartRequest",
        "metadata": {"generateName": "chat-"},
        "spec": spec_for(args),
    }
    created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    name = created["metadata"]["name"]
    print(f"created workspacestartrequest {namespace}/{name}", file=sys.stderr)

    # 2. Watch just this request, from the version we created, until it is Ready or Failed.
    last_phase = None
    for event in watch.Watch().stream(
        api.list_namespaced_custom_object,
        GROUP, VERSION, namespace, PLURAL,
        field_selector=f"metadata.name={name}",
        resource_version=created["metadata"]["resourceVersion"],
        timeout_seconds=args.timeout,
    ):
        status = event["object"].get("status") or {}
        phase = status.get("phase", "Pending")
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        if phase != last_phase:
            print(f"{phase}: {ready.get('reason', '')} {ready.get('message', '')}".rstrip(), file=sys.stderr)
            last_phase = phase
        if phase in ("Ready", "Failed"):
            summary = {
                "name": name,
                "namespace": namespace,
                "phase": phase,
                "reason": ready.get("reason"),
                "message": ready.get("message"),
                "workspace": (status.get("workspace") or {}).get("name"),
                "agent": status.get("agent"),
            }
            print(json.dumps(summary, indent=2))
            return 0 if phase == "Ready" else 1
    print(f"timed out after {args.timeout}s; the request is still {last_phase or 'Pending'}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
