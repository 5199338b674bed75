"""The key store: `rlm keys set openai` keeps a provider's API key in `$RLM_HOME/keys.json` (mode
0600, like `llm keys`), so that it need not be in the shell's environment or on a command line.

A key from the environment always wins; a stored key is used for a provider whose variable is not
set. Keys go to the model clients on the host, never into the worker that runs model code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# key store name -> the environment variable the model clients read
PROVIDERS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def keys_path() -> Path:
    from .paths import rlm_home

    return rlm_home() / "keys.json"


def load_keys() -> dict[str, str]:
    path = keys_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def set_key(name: str, value: str) -> Path:
    """Store `value` as the key `name`; the file is created 0600 and stays 0600."""
    keys = load_keys()
    keys[name] = value
    path = keys_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(keys, handle, indent=2)
    os.chmod(path, 0o600)
    return path


def apply_stored_keys() -> list[str]:
    """Put stored keys into this process's environment for providers whose variable is unset
    (the worker's environment is scrubbed of keys). Returns the variables it set."""
    applied = []
    for name, value in load_keys().items():
        variable = PROVIDERS.get(name)
        if variable and value and not os.environ.get(variable):
            os.environ[variable] = value
            applied.append(variable)
    return applied
