"""Fixtures of the integration tests that several modules share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.integration.browser import CHROMIUM
from tracker.warehouse.client import Warehouse
from tracker.warehouse.schema import Layout, migrate


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless Chromium, driven by playwright (never a downloaded browser)."""
    async with async_playwright() as p:
        chromium = await p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        yield chromium
        await chromium.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Warehouse, Warehouse]]:
    """Two databases of one chdb engine, for rows written the old way (``by_row``) beside the
    same rows written encoded (``encoded``)."""
    dsn = f"chdb://{tmp_path / 'ch'}"
    old, new = Warehouse(dsn, "by_row"), Warehouse(dsn, "encoded")
    try:
        migrate(old, Layout("by_row"))
        migrate(new, Layout("encoded"))
        yield old, new
    finally:
        old.close()
        new.close()
