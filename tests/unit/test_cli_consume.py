"""`clickstream consume` options, parsed without any service."""

from __future__ import annotations

import pytest

from clickstream_lib.cli import build_parser
from clickstream_lib.sink import DEFAULT_BATCH_MAX_BYTES, SinkStats


@pytest.mark.parametrize(
    ("text", "size"), [("65536", 65_536), ("512KiB", 512 * 1024), ("16MiB", 16 * 1024**2), ("1GiB", 1024**3)]
)
def test_batch_max_bytes_takes_bytes_or_binary_units(text: str, size: int) -> None:
    assert build_parser().parse_args(["consume", "--batch-max-bytes", text]).batch_max_bytes == size


def test_batch_max_bytes_defaults_to_the_sinks_and_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["consume"]).batch_max_bytes == DEFAULT_BATCH_MAX_BYTES == 64 * 1024**2
    for bad in ("lots", "12TB", "-1", "MiB"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["consume", "--batch-max-bytes", bad])
        assert exc.value.code == 2
    assert "is not a size" in capsys.readouterr().err


def test_stats_line_and_summary_name_unpublished_dead_letters() -> None:
    from clickstream_lib.cli.consume import format_sink_stats

    st = SinkStats(dead_letters=3, dead_letters_by_reason={"too_large": 3}, dead_letters_unpublished=2)
    assert "dead=3 (too_large=3) dead-unpublished=2 " in format_sink_stats(st)
    assert "dead-unpublished" not in format_sink_stats(SinkStats())
    assert st.as_dict()["dead_letters_unpublished"] == 2


def test_session_timeout_out_of_range_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    from clickstream_lib.cli import main

    assert build_parser().parse_args(["consume", "--session-timeout", "10"]).session_timeout == 10.0
    assert main(["consume", "--session-timeout", "0.5"]) == 2
    assert "--session-timeout: 0.5 is out of range; expected 1..3600 seconds" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["127.0.0.1:notaport", "127.0.0.1:99999", "127.0.0.1"])
def test_a_malformed_broker_url_fails_at_once_naming_the_variable(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sink waits for a broker that does not answer, never for a setting that cannot be right."""
    import time

    from clickstream_lib.cli import main

    monkeypatch.setenv("KAFKA_BROKER_URL", url)
    t0 = time.monotonic()
    assert main(["consume"]) == 2
    assert time.monotonic() - t0 < 5
    assert "configuration error: KAFKA_BROKER_URL:" in capsys.readouterr().err


def test_broker_wait_refuses_a_negative_wait(capsys: pytest.CaptureFixture[str]) -> None:
    from clickstream_lib.cli import main

    assert build_parser().parse_args(["consume", "--broker-wait", "30"]).broker_wait == 30.0
    assert build_parser().parse_args(["consume"]).broker_wait is None
    assert main(["consume", "--broker-wait", "-1"]) == 2
    assert "--broker-wait: -1.0 must be 0 or more seconds" in capsys.readouterr().err
