"""Export the SDL: `python -m schema.export` rewrites schema/schema.graphql; `--check` only
compares (exit 1 when the committed file differs from the code)."""

from __future__ import annotations

import sys
from pathlib import Path

SDL_PATH = Path(__file__).with_name("schema.graphql")


def sdl() -> str:
    from schema.build import schema

    return schema.as_str() + "\n"


def main(argv: list[str]) -> int:
    text = sdl()
    if "--check" in argv:
        if SDL_PATH.read_text() != text:
            print(f"{SDL_PATH} is out of date: run python -m schema.export", file=sys.stderr)
            return 1
        return 0
    SDL_PATH.write_text(text)
    print(f"wrote {SDL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
