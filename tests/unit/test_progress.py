import io

from raydetect.progress import PlainProgress, progress


def test_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    bar = progress(range(1000), desc="work", unit="step", stream=stream)
    assert isinstance(bar, PlainProgress)
    for _ in bar:
        bar.set_postfix(loss="0.1")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 4  # 25 %, 50 %, 75 % and the closing line
    assert lines[0].startswith("work: 250/1000 step (25%)")
    assert lines[-1].startswith("work: 1000/1000 step (100%)") and lines[-1].endswith("loss=0.1")


def test_manual_updates_and_time_based_lines_without_total():
    stream = io.StringIO()
    with progress(desc="rows", unit="row", stream=stream, every_s=0.0) as bar:
        bar.update(3)
        bar.update(4)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("rows: 7 row,")
    assert len(lines) == 3  # two updates (every_s=0) and the close


def test_disabled_prints_nothing():
    stream = io.StringIO()
    assert list(progress(range(5), desc="x", disable=True, stream=stream)) == list(range(5))
    assert stream.getvalue() == ""
