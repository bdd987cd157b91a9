"""Convert the shared datasets into the quality benchmark's input format (EVENTS.csv + ITEMS.tsv).

EVENTS.csv: `user_id,item_id,timestamp` (order within a user = timestamp order, ties in file order);
ITEMS.tsv: `item_id<TAB>text`. Reads ../shared/datasets (never copied into the repository).
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections import defaultdict
from pathlib import Path

log = logging.getLogger("prepare_datasets")

REPO = Path(__file__).resolve().parent.parent
DATASETS = REPO.parent / "shared" / "datasets"


def amazon_scientific(src: Path, out: Path) -> tuple[Path, Path]:
    """Chronological sequences -> synthetic, order-preserving timestamps (one per position)."""
    events, items = out / "amazon-scientific.events.csv", out / "amazon-scientific.items.tsv"
    with (src / "Scientific.full_sequences.tsv").open(encoding="utf-8") as fh, events.open("w", newline="") as ev:
        writer = csv.writer(ev)
        writer.writerow(["user_id", "item_id", "timestamp"])
        next(fh)
        for line in fh:
            _, user, _, asins = line.rstrip("\n").split("\t")
            for pos, asin in enumerate(asins.split()):
                writer.writerow([user, asin, pos])
    with (src / "Scientific.text").open(encoding="utf-8") as fh, items.open("w", encoding="utf-8") as it:
        next(fh)
        it.write("item_id\ttext\n")
        for line in fh:
            item, _, text = line.rstrip("\n").partition("\t")
            it.write(f"{item}\t{' '.join(text.split())}\n")
    return events, items


def movielens_small(src: Path, out: Path) -> tuple[Path, Path]:
    """ratings.csv -> events; movies.csv titles + genres + the most frequent user tags -> item text."""
    events, items = out / "ml-latest-small.events.csv", out / "ml-latest-small.items.tsv"
    with (src / "ratings.csv").open(encoding="utf-8") as fh, events.open("w", newline="") as ev:
        reader, writer = csv.DictReader(fh), csv.writer(ev)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for row in reader:
            writer.writerow([row["userId"], row["movieId"], row["timestamp"]])
    tags: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with (src / "tags.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            tags[row["movieId"]][row["tag"].strip().lower()] += 1
    with (src / "movies.csv").open(encoding="utf-8") as fh, items.open("w", encoding="utf-8") as it:
        it.write("item_id\ttext\n")
        for row in csv.DictReader(fh):
            top = sorted(tags[row["movieId"]].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
            genres = row["genres"].replace("|", ", ") if row["genres"] != "(no genres listed)" else ""
            text = ". ".join(p for p in (row["title"], genres, ", ".join(t for t, _ in top)) if p)
            it.write(f"{row['movieId']}\t{' '.join(text.split())}\n")
    return events, items


PREPARERS = {"amazon-scientific": amazon_scientific, "ml-latest-small": movielens_small}


def prepare(name: str, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    src = DATASETS / name
    if not src.is_dir():
        raise SystemExit(f"{src} is absent: the shared datasets live beside the repository")
    return PREPARERS[name](src, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", choices=sorted(PREPARERS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    events, items = prepare(args.dataset, args.out)
    print(events, items)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
