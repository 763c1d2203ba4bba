"""Print a YAML file as JSON (PyYAML's safe loader): usage yaml2json.py FILE."""
import json
import sys

import yaml

with open(sys.argv[1]) as f:
    print(json.dumps(yaml.safe_load(f)))
