"""The lifecycle every stand-in shares: ``start()``/``stop()``, and ``async with`` calling them."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class AsyncService(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
