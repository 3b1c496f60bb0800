"""Regenerates spec/manifest.schema.json from the pydantic model (tests fail when it is stale).

    python spec/make_schema.py
"""

import json
from pathlib import Path

from ladd_format.manifest import json_schema

target = Path(__file__).with_name("manifest.schema.json")
target.write_text(json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n")
print(f"wrote {target}")
