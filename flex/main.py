"""The Flex Template's entry point on the launcher VM (the image's FLEX_TEMPLATE_PYTHON_PY_FILE):
`pairscore score` with the template's parameters. The code is pipeline/flex.py, installed in
the image with the rest of pairscore; this file only has to be a script the launcher can run.
"""

from pipeline.flex import console

if __name__ == "__main__":
    console()
