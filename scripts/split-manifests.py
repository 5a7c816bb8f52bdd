#!/usr/bin/env python3
"""Splits `helm template` output (stdin) into one file per chart template under OUTDIR.

Each document goes to OUTDIR/<template file name> (helm's `# Source: <chart>/templates/<file>`
line), in helm's order; OUTDIR/<file> gets HEADER (a file) first when given. Prints the files.
"""
import pathlib
import sys


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print("usage: split-manifests.py OUTDIR [HEADER-FILE] < helm-template-output", file=sys.stderr)
        return 2
    out = pathlib.Path(sys.argv[1])
    header = pathlib.Path(sys.argv[2]).read_text() if len(sys.argv) == 3 else ""
    files: dict[str, list[str]] = {}
    for doc in sys.stdin.read().split("\n---\n"):
        lines = doc.strip("\n").removeprefix("---\n").splitlines()
        if not lines:
            continue
        if not lines[0].startswith("# Source: "):
            print(f"a document without a '# Source:' line: {lines[0]!r}", file=sys.stderr)
            return 1
        name = lines[0].rsplit("/", 1)[-1]
        body = "\n".join(lines[1:]).strip("\n")
        if body:
            files.setdefault(name, []).append(body + "\n")
    out.mkdir(parents=True, exist_ok=True)
    for name, docs in files.items():
        (out / name).write_text(header + "---\n".join(docs))
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
