"""The demo source as a landing source: written once, then extended a day at a time as nights ask for days
it has not produced yet (prefix-stable: earlier days never change)."""

from __future__ import annotations

import datetime
import json
import logging

from pipeline.catalog import Catalog
from pipeline.tools.demo_data import DemoConfig, generate

logger = logging.getLogger(__name__)


def write_demo_source(catalog: Catalog, days: int, seed: int, if_empty: bool = False) -> dict[str, int]:
    """Generate the demo source into the landing folder and mark it as the demo (so it can extend itself).

    The drops end yesterday (UTC): a night only processes days that have ended, so the demo's last `days`
    days are real past dates wherever and whenever it is generated (same seed, same content)."""
    events = catalog.landing_dir("events")
    if if_empty and events.is_dir() and any(events.iterdir()):
        logger.info("landing folder %s already has events; not generating demo data", events)
        return {}
    yesterday = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)
    config = DemoConfig(days=days, seed=seed, start_date=yesterday - datetime.timedelta(days=days - 1))
    counts = generate(catalog.landing, config)
    marker = {"days": config.days, "seed": config.seed, "start_date": config.start_date.isoformat()}
    catalog.demo_marker.write_text(json.dumps(marker))
    return counts


def ensure_demo_covers(catalog: Catalog, day: datetime.date) -> None:
    """If the landing folder is the demo source and `day` has no drop yet, let the source produce it."""
    marker = catalog.demo_marker
    if not marker.is_file() or catalog.landing_file("events", day).is_file():
        return
    info = json.loads(marker.read_text())
    start = datetime.date.fromisoformat(info["start_date"])
    days = (day - start).days + 1
    if days <= info["days"]:
        return
    logger.info("demo source: producing drops up to %s", day)
    generate(catalog.landing, DemoConfig(days=days, seed=info["seed"], start_date=start))
    marker.write_text(json.dumps({**info, "days": days}))
