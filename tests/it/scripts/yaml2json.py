"""Print a YAML file as JSON (PyYAML's safe loader): usage yaml2json.py FILE.

A file of several documents prints as a list of them."""
import json
import sys

import yaml

with open(sys.argv[1]) as f:
    docs = list(yaml.safe_load_all(f))
print(json.dumps(docs[0] if len(docs) == 1 else docs))
