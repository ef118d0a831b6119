"""Check or rewrite the docs generated from the settings schema (lampctl/config/__init__.py SETTINGS).

    python scripts/config_docs.py           exit 1, naming each file, when README.md or config.toml differ
    python scripts/config_docs.py --write   rewrite README.md's configuration table and config.toml's comments

Edit a key's row in lampctl/config/__init__.py, never the generated text; then run with --write.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's lampctl, whatever is installed

from lampctl.config import docs as config_docs  # noqa: E402

FILES = {"README.md": config_docs.render_readme, "config.toml": config_docs.render_config_toml}


def stale(root: Path = ROOT) -> dict[str, str]:
    """{file: what the schema renders} for each file that differs from it."""
    found = {}
    for name, render in FILES.items():
        text = (root / name).read_text(encoding="utf-8")
        if render(text) != text:
            found[name] = render(text)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the files that differ")
    args = parser.parse_args(argv)
    found = stale()
    for name, text in found.items():
        if args.write:
            (ROOT / name).write_text(text, encoding="utf-8")
            print(f"rewrote {name} from the settings schema")
        else:
            print(
                f"{name} differs from the settings schema: run python scripts/config_docs.py --write", file=sys.stderr
            )
    return 1 if found and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
