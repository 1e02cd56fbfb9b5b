"""A Kedro dataset for tensors, state dicts and checkpoints saved with ``torch.save``.

Loading uses ``weights_only=True`` so that a file can never execute code, and saving goes
through a temporary file and a rename so that a crash never leaves a half-written file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from dmae_pipeline.io import atomic_torch_save, safe_torch_load


class TorchFileDataset(AbstractDataset[Any, Any]):
    """Saves any object of tensors, dicts, lists, strings and numbers to one ``.pt`` file.

    With ``optional: true`` a missing file loads as ``None`` instead of failing, for inputs
    that a node may not need (a finetune initialized from scratch, say).
    """

    def __init__(self, filepath: str, optional: bool = False, metadata: dict | None = None):
        self._filepath = Path(filepath)
        self._optional = optional
        self.metadata = metadata

    def _load(self) -> Any:
        if not self._filepath.exists():
            if self._optional:
                return None
            raise DatasetError(f"{self._filepath} does not exist: run the pipeline that writes it")
        return safe_torch_load(self._filepath)

    def _save(self, data: Any) -> None:
        atomic_torch_save(data, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "optional": self._optional}
