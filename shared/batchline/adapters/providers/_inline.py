"""What a provider client without uploads of its own does about `upload_input`."""

from __future__ import annotations

from batchline.domain.models import BatchTag
from batchline.ports import StagedPayload


class NoUploads:
    """A provider that takes a batch's input without an upload of its own (Anthropic:
    the requests inline, in the create; Vertex AI: the staged payload read in place):
    nothing goes up ahead, and nothing is ever to be deleted."""

    def upload_input(self, payload: StagedPayload, tag: BatchTag) -> None:
        """Nothing to upload ahead: the create takes the input as it is."""
        return None

    def discard_input(self, file_id: str) -> None:
        """No upload was ever made: nothing to delete."""
        return None
