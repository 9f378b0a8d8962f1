from __future__ import annotations

import pytest

from audiotool.tasks import RuntimeOptions
from audiotool.tasks._batch import DEFAULT_BATCH_CPU
from audiotool.tasks.common import Runtime


def test_default_batch_size_is_one_on_the_cpu() -> None:
    rt = Runtime.from_options(RuntimeOptions(device="cpu"))
    assert rt.batch_size == DEFAULT_BATCH_CPU == 1


@pytest.mark.parametrize("n", [1, 3, 16])
def test_an_explicit_batch_size_is_kept(n: int) -> None:
    assert Runtime.from_options(RuntimeOptions(device="cpu", batch_size=n)).batch_size == n
