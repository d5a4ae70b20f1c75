from typer.testing import CliRunner

from raydetect.cli import app

runner = CliRunner()


def test_help_lists_stages():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in ("version", "config"):
        assert stage in result.output


def test_version_prints_engine_versions():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0, result.output
    for name in ("raydetect", "ray", "torch", "torchvision", "diffusers", "cuda available"):
        assert name in result.output


def test_config_shows_overrides():
    result = runner.invoke(app, ["config", "--set", "train.epochs=11"])
    assert result.exit_code == 0, result.output
    assert "epochs: 11" in result.output
