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


def test_ray_data_bars_are_switched_off_only_when_output_is_not_a_terminal():
    """Ray Train's workers redraw Ray Data's tqdm bars into a piped `raydetect train` (75 escape-code redraws
    for one tiny epoch, measured): off unless stdout is a terminal."""
    from ray.data import DataContext

    from raydetect.progress import plain_ray_data_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    context = DataContext.get_current()
    before = context.enable_progress_bars
    try:
        context.enable_progress_bars = True
        plain_ray_data_progress(Terminal())
        assert context.enable_progress_bars is True
        plain_ray_data_progress(io.StringIO())
        assert context.enable_progress_bars is False
    finally:
        context.enable_progress_bars = before
