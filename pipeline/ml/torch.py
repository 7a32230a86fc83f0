"""A PyTorch ``IterableDataset`` over a feature table (PyTorch is optional)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline.errors import CalibrewError
from pipeline.ml.stream import TableStream


def torch_dataset(*args: Any, **kwargs: Any) -> Any:
    """A ``torch.utils.data.IterableDataset`` yielding batches of tensors.

    Takes the arguments of :class:`~pipeline.ml.stream.TableStream` and yields its batches
    as ``{name: torch.Tensor}``, including ``negative_weights`` (``"keep"`` by default:
    weighted losses such as ``(loss * w).sum()`` accept negative NLO weights; ``"abs"``
    or ``"drop"`` otherwise, see :mod:`pipeline.ml.weights`). Use it with
    ``DataLoader(dataset, batch_size=None, num_workers=N)``: each loader worker reads its
    own share of the blocks. Call ``dataset.set_epoch(e)`` to reshuffle between epochs.

    Examples
    --------
    .. code-block:: python

        from torch.utils.data import DataLoader
        ds = torch_dataset("out/tt/features.zarr", ["met", "ht"], padded={"jets": None},
                           folds=range(8), batch_size=512)
        for batch in DataLoader(ds, batch_size=None, num_workers=2):
            x, mask = batch["jets"], batch["jets.mask"]
    """
    try:
        import torch
        from torch.utils.data import IterableDataset, get_worker_info
    except ImportError:
        raise CalibrewError("torch_dataset needs PyTorch: pip install torch") from None

    class TableDataset(IterableDataset):
        def __init__(self, stream: TableStream) -> None:
            self.stream = stream

        def set_epoch(self, epoch: int) -> None:
            self.stream.set_epoch(epoch)

        def __iter__(self) -> Iterator[dict[str, Any]]:
            info = get_worker_info()
            if info is not None:
                self.stream.shard(info.id, info.num_workers)
            for batch in self.stream:
                yield {k: torch.as_tensor(v) for k, v in batch.items()}

    return TableDataset(TableStream(*args, **kwargs))
