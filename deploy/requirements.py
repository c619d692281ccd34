"""Print the package's runtime requirements (and those of the extras named) from pyproject.toml.

The image installs them in a layer of their own, before the source is copied, so a change
under proxy/ reuses it:  python requirements.py "llama" > requirements.txt
"""

import sys
import tomllib

with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)["project"]
extras = [name for name in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if name]
for name in project["dependencies"] + [
    requirement for extra in extras for requirement in project["optional-dependencies"][extra]
]:
    print(name)
