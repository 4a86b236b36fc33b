"""Rebuild schema/static/graphiql/: GraphiQL's prebuilt browser bundles, from npm, with licences.

    python3 tools/graphiql/build.py

Runs `npm ci` on this folder's package.json + package-lock.json in a temporary directory and
copies the packages' own UMD/minified files (no bundler: GraphiQL 3 is the last line that ships
one, GraphiQL 4+ needs a bundler and Monaco). The output is committed, so installing CheckMate
needs no Node. To move a version: edit package.json, run
`npm install --package-lock-only --ignore-scripts` here, then this script, and commit all three.

The script is Python rather than shell because it also gathers every installed package's licence
(graphiql.min.js bundles CodeMirror, markdown-it, graphql-js and more, whose notices the bundle
does not carry) and writes versions.json; the lock makes that list reproducible.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parent.parent / "schema" / "static" / "graphiql"

# (package, file inside the package, name served): the page loads them in this order.
FILES = [
    ("react", "umd/react.production.min.js", "react.production.min.js"),
    ("react-dom", "umd/react-dom.production.min.js", "react-dom.production.min.js"),
    ("graphql-ws", "umd/graphql-ws.min.js", "graphql-ws.min.js"),
    ("graphiql", "graphiql.min.js", "graphiql.min.js"),
    ("graphiql", "graphiql.min.css", "graphiql.min.css"),
    ("@graphiql/plugin-explorer", "dist/index.umd.js", "plugin-explorer.umd.js"),
    ("@graphiql/plugin-explorer", "dist/style.css", "plugin-explorer.css"),
]
# The source maps are not shipped; a dangling reference would make devtools ask for them.
SOURCE_MAP_COMMENT = re.compile(rb"\n?(//# sourceMappingURL=\S+|/\*# sourceMappingURL=\S+ \*/)\s*$")
LICENCE_FILE = re.compile(r"^(licen[cs]e|copying)(\..*)?$", re.IGNORECASE)


def installed_packages(node_modules: Path) -> list[Path]:
    """Every package folder under node_modules, nested ones included, sorted by path."""
    def is_package(folder: Path) -> bool:
        parent = folder.parent
        scoped = parent.name.startswith("@") and parent.parent.name == "node_modules"
        return parent.name == "node_modules" or scoped

    return sorted(manifest.parent for manifest in node_modules.rglob("package.json")
                  if is_package(manifest.parent))


def licence_notice(package: Path) -> str:
    manifest = json.loads((package / "package.json").read_text())
    licence = manifest.get("license", "no licence field")
    header = f"{manifest['name']}@{manifest['version']} ({licence})"
    texts = [path.read_text(errors="replace").strip() for path in sorted(package.iterdir())
             if path.is_file() and LICENCE_FILE.match(path.name)]
    body = "\n\n".join(texts) or "(the package has no licence file; its package.json says above)"
    return f"{'=' * 78}\n{header}\n{'=' * 78}\n{body}\n"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="checkmate-graphiql-") as temp:
        work = Path(temp)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, work / name)
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=work, check=True,
        )
        node_modules = work / "node_modules"
        if OUTPUT.exists():
            shutil.rmtree(OUTPUT)
        OUTPUT.mkdir(parents=True)
        shipped: dict[str, str] = {}
        for package, source, served in FILES:
            data = (node_modules / package / source).read_bytes()
            (OUTPUT / served).write_bytes(SOURCE_MAP_COMMENT.sub(b"\n", data))
            version = json.loads((node_modules / package / "package.json").read_text())["version"]
            shipped[served] = f"{package}@{version}/{source}"
        notices = [licence_notice(package) for package in installed_packages(node_modules)]
        (OUTPUT / "THIRD_PARTY_LICENSES.txt").write_text(
            "Licences of the npm packages these files come from, and of every package installed\n"
            "with them (graphiql.min.js bundles its dependencies).\n\n" + "\n".join(notices)
        )
        (OUTPUT / "versions.json").write_text(json.dumps(shipped, indent=2) + "\n")
    for path in sorted(OUTPUT.iterdir()):
        print(f"{path.stat().st_size:>9}  {path.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
