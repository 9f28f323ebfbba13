"""Upload an exported folder to the Hugging Face Hub with huggingface_hub (token from HF_TOKEN, never logged)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def find_token() -> str | None:
    """The token an upload would use: HF_TOKEN, else huggingface_hub's saved login; None when there is none."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token() or None


def push_folder(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; returns the commit URL.

    The token comes from HF_TOKEN (else huggingface_hub's own login); it is passed to HfApi and never
    printed, and errors are re-raised with the token scrubbed from their message.
    """
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN") or None
    api = HfApi(token=token)
    log.info("uploading %s to https://huggingface.co/%s (private=%s)", folder, repo_id, private)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message=commit_message or "Upload pruned model exported by megadrp")
    except Exception as err:
        message = str(err)
        if token and token in message:  # defensive: never surface the secret in logs or tracebacks
            raise RuntimeError(message.replace(token, "***")) from None
        raise
    return str(getattr(commit, "commit_url", commit))
