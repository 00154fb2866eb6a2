#!/usr/bin/env python3
"""Fails if a dependency in the resolved graph declares a rust-version newer than ours.

This machine has no other toolchain than the current one, so CI cannot build with the
minimum supported Rust version itself. What it can check is the declared MSRV of every
package that Cargo.lock resolves for this platform, dev- and build-dependencies included
(`cargo +<msrv> test` would need them all): none may be newer than the workspace's own
`rust-version`. Packages that declare none pass; the compiler's own check of our code is
clippy's `incompatible_msrv` lint (see .ci/run).

Usage: .ci/dependency_msrv.py [path/to/Cargo.toml]
"""

import json
import subprocess
import sys


def version_tuple(text):
    """'1.85' and '1.85.0' both become (1, 85, 0)."""
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def host_triple():
    out = subprocess.run(["rustc", "-vV"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("host: "):
            return line[len("host: "):].strip()
    sys.exit("dependency_msrv: no host triple in `rustc -vV`")


def main():
    cmd = ["cargo", "metadata", "--format-version", "1", "--locked",
           "--filter-platform", host_triple()]
    if len(sys.argv) > 1:
        cmd += ["--manifest-path", sys.argv[1]]
    meta = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    packages = {p["id"]: p for p in meta["packages"]}
    members = set(meta["workspace_members"])
    ours = [packages[m]["rust_version"] for m in members if packages[m].get("rust_version")]
    if not ours:
        sys.exit("dependency_msrv: the workspace declares no rust-version")
    msrv = min(ours, key=version_tuple)

    used = [node["id"] for node in meta["resolve"]["nodes"]]
    too_new = []
    for pid in used:
        if pid in members:
            continue
        p = packages[pid]
        needs = p.get("rust_version")
        if needs and version_tuple(needs) > version_tuple(msrv):
            too_new.append(f"{p['name']} {p['version']} requires Rust {needs}")

    if too_new:
        print(f"dependency_msrv: our rust-version is {msrv}, but:", file=sys.stderr)
        for line in sorted(too_new):
            print(f"  {line}", file=sys.stderr)
        print("Pin an older version (`cargo update -p NAME --precise VERSION`; the workspace's "
              "resolver 3 picks compatible ones by itself on `cargo update`) or raise "
              "rust-version.", file=sys.stderr)
        sys.exit(1)
    print(f"dependency_msrv: {len(used) - len(members)} dependencies, none needs more than "
          f"Rust {msrv}")


if __name__ == "__main__":
    main()
