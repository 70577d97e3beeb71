"""Benchmark: ways to read a property for a filter, against the typed column, paired in one process.

On a store that ``bench/queries.py --data-dir DIR`` loaded (its events carry ``properties.device``, a copy of the
``device`` column), times ``count()``, a ``GROUP BY country`` and the top 10 items where the device is ``mobile``,
reading the device as: the typed ``LowCardinality`` column; the JSON path cast to String (what a ``prop.<key>``
filter reads without a property column); the path's String variant (``.:String``, NULL for other types);
``dynamicElement``; ``toString``; and the property column (``prop/device``, added and filled first if missing).
Only the cast and the property column are exact for every value type; the others are here to show where the time
goes. Medians of ``--rounds`` after a warm-up, the forms alternating within each round.

    .venv/bin/python bench/properties_read.py --data-dir /tmp/bq [--size 10000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMS = {
    "typed": "device",
    "JSON cast": "properties.`device`::String",
    "variant": "properties.`device`.:String",
    "dynamicElement": "dynamicElement(properties.`device`, 'String')",
    "toString": "toString(properties.`device`)",
    "property column": "`prop/device`",
}
SHAPES = {
    "count": "SELECT count() FROM {t} WHERE {e} = 'mobile'",
    "by country": "SELECT country, count() FROM {t} WHERE {e} = 'mobile' GROUP BY country",
    "top items": "SELECT item_id, count() AS c FROM {t} WHERE {e} = 'mobile' GROUP BY item_id ORDER BY c DESC LIMIT 10",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.environ["CLICKSTREAM_DATA_DIR"] = str(Path(args.data_dir).resolve())
    from clickstream_lib.settings import Settings
    from clickstream_lib.store import connect

    store = connect(Settings.from_env(clickhouse_database=f"bench_{args.size}"))
    store.add_property_columns(["device"])
    table = store.table("events")
    for shape, sql in SHAPES.items():
        times: dict[str, list[float]] = {form: [] for form in FORMS}
        for _ in range(args.rounds + 1):  # the first round warms up
            for form, expr in FORMS.items():
                t0 = time.perf_counter()
                store.query_rows(sql.format(t=table, e=expr))
                times[form].append((time.perf_counter() - t0) * 1000)
        med = {form: statistics.median(v[1:]) for form, v in times.items()}
        print(f"{shape:10s} " + "  ".join(f"{f} {ms:.0f} ms ({ms / med['typed']:.2f}x)" for f, ms in med.items()))
    store.close()


if __name__ == "__main__":
    main()
