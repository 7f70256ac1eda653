"""Run import-linter (``lint-imports``) on the layout the package installs as.

Why a copy: pyproject's ``package-dir`` installs the design card's top-level folders (``pipeline/``,
``transforms/`` ...) as ``altsieve.pipeline`` and so on, but import-linter finds subpackages by walking
the root package's folder, where they are not. The ``.py`` files are copied into that shape in a
temporary folder (a fraction of a second) and the contracts of ``[tool.importlinter]`` are checked there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_dir: dict[str, str] = project["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory(prefix="altsieve-lint-imports-") as staging:
        for package, folder in package_dir.items():
            target = Path(staging, *package.split("."))
            shutil.copytree(ROOT / folder, target, dirs_exist_ok=True,
                            ignore=lambda _dir, names: [n for n in names if n == "__pycache__"
                                                        or (Path(_dir, n).is_file() and not n.endswith(".py"))])
        env = {**os.environ, "PYTHONPATH": staging}
        lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or "lint-imports"
        return subprocess.call([lint, str(ROOT / "pyproject.toml"), "--no-cache"], cwd=staging, env=env)


if __name__ == "__main__":
    sys.exit(main())
