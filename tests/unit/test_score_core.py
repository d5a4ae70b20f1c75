"""Batch scoring's plain-Python core, without Ray: decode stage, predictor, decisions, ensembles, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from raydetect.config import load_settings
from raydetect.data.images import DecodeLimits, decode_image, sha256_hex
from raydetect.data.manifest import ManifestError
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import Detector, ModelCard, save_model
from raydetect.models.views import ViewPolicy, make_views, read_views, view_boxes
from raydetect.score import results
from raydetect.score.decision import combine_cards, decide_all, normalized_weights
from raydetect.score.decode import DONE_SHA, decode_batch
from raydetect.score.inputs import list_inputs
from raydetect.score.pipeline import parse_actors, parse_models
from raydetect.score.predictor import CONTRACT_COLUMNS, Predictor, output_schema
from tests.datasets import encode, make_kaggle_dataset, smooth_photo, write_bad_files


def _save_tiny(path: Path, seed: int, name: str = "tiny", version: str = "1", size: int = 48, **card) -> str:
    torch.manual_seed(seed)
    model = build_backbone("tinycnn")
    with torch.no_grad():  # untrained BatchNorm statistics make every output ~equal; spread them out
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return save_model(
        model, ModelCard(backbone="tinycnn", name=name, version=version, image_size=size, **card), str(path)
    )


def _images(folder: Path, n: int = 6, size: int = 70) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.{'png' if i % 2 else 'jpg'}"
        path.write_bytes(encode(smooth_photo(rng, size + 8 * i), "PNG" if i % 2 else "JPEG"))
        paths.append(path)
    return paths


def _table(paths: list[Path], **extra: list) -> pa.Table:
    return pa.table({"path": [str(p) for p in paths], **extra})


def _resize(size: int) -> ViewPolicy:
    return ViewPolicy(mode="resize", size=size)


def test_the_decode_stage_cuts_the_views_of_the_one_view_function(tmp_path: Path):
    paths = _images(tmp_path, n=3)
    native, legacy = ViewPolicy(size=32), _resize(48)
    out = decode_batch(_table(paths), [native, legacy])
    for policy in (native, legacy):
        for path, got in zip(paths, read_views(out, policy), strict=True):
            assert np.array_equal(got, make_views(decode_image(path.read_bytes()), policy))
    sides = [70 + 8 * i for i in range(3)]
    assert out.column("width").to_pylist() == sides and out.column("height").to_pylist() == sides
    assert out.column("views").to_pylist() == [len(view_boxes(s, s, native)) for s in sides]


def test_decode_batch_turns_every_bad_input_into_an_error_row(tmp_path: Path):
    good = _images(tmp_path / "good", n=2)
    bad = write_bad_files(tmp_path / "bad")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)  # 81 Mpx: over the default pixel cap, a tiny file
    limits = DecodeLimits(max_bytes=max(p.stat().st_size for p in [*good, bomb]) + 1)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(limits.max_bytes + (1 << 21)))  # over the byte limit
    paths = [*good, *bad.values(), big, bomb, tmp_path / "missing.jpg"]
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "PNG"))
    paths.append(tiny)
    out = decode_batch(_table(paths), [ViewPolicy(size=32)], limits)
    errors, shas = out.column("error").to_pylist(), out.column("sha256").to_pylist()
    reasons = [e.split(":", 1)[0] if e else None for e in errors]
    assert reasons == [None, None, "corrupt", "truncated", "empty", "unsupported_format", "too_large",
                       "too_many_pixels", "missing", "too_small"]  # fmt: skip
    assert out.column("views").to_pylist()[-1] is None and out.column("width").to_pylist()[-1] == 8
    assert shas[0] == sha256_hex(good[0].read_bytes())
    assert shas[6] == sha256_hex(big.read_bytes())  # streamed past the cap, still hashed
    assert shas[8] is None
    assert "bytes" not in out.column_names and DONE_SHA not in out.column_names


def test_decode_batch_drops_rows_a_resumed_run_already_has(tmp_path: Path):
    paths = _images(tmp_path, n=3)
    done = [sha256_hex(paths[0].read_bytes()), "stale-sha", ""]
    out = decode_batch(_table(paths, **{DONE_SHA: done}), [_resize(32)])
    assert out.column("path").to_pylist() == [str(paths[1]), str(paths[2])]
    assert [v.shape for v in read_views(out, _resize(32))] == [(1, 32, 32, 3)] * 2


def test_decode_batch_accepts_the_data_layers_byte_reader_output(tmp_path: Path):
    from raydetect.data.ray_io import read_bytes_batch

    paths = [*_images(tmp_path, n=2), tmp_path / "nope.png"]
    table = read_bytes_batch(_table(paths, label=pa.array([0, 1, None], type=pa.int64())))
    out = decode_batch(table, [_resize(32)])
    assert out.column("error").to_pylist()[:2] == [None, None]
    assert out.column("error").to_pylist()[2].startswith("missing")
    assert out.column("label").to_pylist() == [0, 1, None]


def test_predictions_equal_the_model_called_directly(tmp_path: Path):
    model_uri = _save_tiny(tmp_path / "model", seed=1)
    paths = [*_images(tmp_path / "img", n=5), *write_bad_files(tmp_path / "bad").values()]
    batch = decode_batch(_table(paths, label=pa.array([1] * len(paths))), [_resize(48)])
    predictor = Predictor([model_uri], num_threads=1)
    out = predictor(batch)
    assert out.schema.names[: len(CONTRACT_COLUMNS)] == list(CONTRACT_COLUMNS)
    assert out.schema.field("scored_at").type == pa.timestamp("us", tz="UTC")
    rows = out.to_pandas()
    detector = Detector.load(model_uri, device="cpu")
    good = rows[rows["error"].isna()]
    direct = np.array([detector.predict_image(decode_image(Path(p).read_bytes())) for p in good["path"]])
    np.testing.assert_allclose(good["prob_ai"].to_numpy(), direct, rtol=0, atol=1e-6)
    assert (good["views"] == 1).all() and good["width"].tolist() == [70 + 8 * i for i in range(5)]
    assert good["decision"].tolist() == [detector.card.decide(float(p)) for p in direct]
    bad = rows[rows["error"].notna()]
    assert len(bad) == 4 and bad["prob_ai"].isna().all() and bad["decision"].isna().all()
    assert (rows["model_name"] == "tiny").all() and (rows["model_version"] == "1").all()
    assert rows["label"].tolist() == [1] * len(paths)  # carried columns come through


def test_native_tiles_of_images_of_several_sizes_score_like_the_model_called_directly(tmp_path: Path):
    policy = ViewPolicy(size=32, max_tiles=4)
    model_uri = _save_tiny(tmp_path / "model", seed=2, size=32, views=policy.to_dict())
    paths = _images(tmp_path / "img", n=4)  # 70, 78, 86, 94 px: 4 tiles each (3 x 3 grids thinned to 2 x 2)
    out = Predictor([model_uri], num_threads=1, max_batch=5)(decode_batch(_table(paths), [policy])).to_pandas()
    detector = Detector.load(model_uri, device="cpu")
    direct = [detector.predict_image(decode_image(p.read_bytes())) for p in paths]
    np.testing.assert_allclose(out["prob_ai"].to_numpy(), direct, rtol=0, atol=1e-6)
    assert out["views"].tolist() == [4] * 4 and out["error"].isna().all()


def test_ensemble_averages_weighted_probabilities(tmp_path: Path):
    a = _save_tiny(tmp_path / "a", seed=1, name="a", size=48, threshold=0.4, review_band=[0.3, 0.5])
    b = _save_tiny(tmp_path / "b", seed=2, name="b", size=32, threshold=0.6, review_band=[0.5, 0.7])
    paths = _images(tmp_path / "img", n=4)
    batch = decode_batch(_table(paths), [_resize(32), _resize(48)])
    pa_, pb = (Predictor([m]).probabilities(batch) for m in (a, b))
    ensemble = Predictor([a, b], weights=[3, 1])
    np.testing.assert_allclose(ensemble.probabilities(batch), 0.75 * pa_ + 0.25 * pb, rtol=0, atol=1e-12)
    card = ensemble.card
    assert card.threshold == pytest.approx(0.45) and card.review_band == pytest.approx([0.35, 0.55])
    assert card.name == "a+b" and card.version == "a@1*0.75+b@1*0.25"
    out = ensemble(batch).to_pandas()
    assert out["decision"].tolist() == decide_all(card, out["prob_ai"].to_numpy())


def test_decisions_and_weights():
    card = ModelCard(backbone="x", threshold=0.5, review_band=[0.4, 0.6])
    assert decide_all(card, np.array([0.1, 0.45, 0.7, np.nan])) == ["real", "review", "ai", None]
    assert normalized_weights(None, 2) == [0.5, 0.5]
    assert normalized_weights([1, 3], 2) == [0.25, 0.75]
    with pytest.raises(ValueError):
        normalized_weights([1], 2)
    with pytest.raises(ValueError):
        normalized_weights([0, 0], 2)
    assert combine_cards([card]) is card


def test_parse_models_and_actors(tmp_path: Path):
    a = _save_tiny(tmp_path / "a", seed=1, name="a")
    b = _save_tiny(tmp_path / "b", seed=2, name="b", size=32)
    spec = parse_models(f"{a},{b}", "2,1")
    assert spec.uris == [a, b] and spec.weights == pytest.approx([2 / 3, 1 / 3])
    assert spec.policies() == [_resize(48), _resize(32)]
    assert spec.policies("native") == [ViewPolicy(size=48), ViewPolicy(size=32)]
    with pytest.raises(ValueError, match="model.json"):
        parse_models(str(tmp_path / "nowhere"))
    settings = load_settings()
    assert parse_actors("1:3", settings) == (1, 3)
    assert parse_actors("2", settings) == (2, 2)
    assert parse_actors(None, settings) == (settings.score.min_actors, settings.score.max_actors)
    with pytest.raises(ValueError):
        parse_actors("3:1", settings)


def test_list_inputs_reads_roots_folders_and_manifest_files(tmp_path: Path):
    root = make_kaggle_dataset(tmp_path / "kaggle", n_pairs=3, size=32, n_test=2)
    train = list_inputs(str(root))
    assert len(train) == 6 and train["label"].dtype == "Int64" and "group" in train.columns
    assert len(list_inputs(str(root), "all")) == 8
    write_bad_files(tmp_path / "folder")
    assert len(list_inputs(str(tmp_path / "folder"))) == 4
    manifest = tmp_path / "list.csv"
    pd.DataFrame({"file_name": ["kaggle/train_data/0000_0.png", "kaggle/train_data/0000_0.png"], "x": [1, 2]}).to_csv(
        manifest, index=False
    )
    listed = list_inputs(str(manifest))
    assert listed["path"].tolist() == [str(root / "train_data/0000_0.png")]  # relative to the file, de-duplicated
    text = tmp_path / "list.txt"
    text.write_text(f"# two images\n{root / 'train_data/0000_1.png'}\n\nkaggle/train_data/0001_0.png\n")
    assert len(list_inputs(str(text))) == 2
    with pytest.raises(ManifestError):
        list_inputs(str(root / "train.csv"), "bogus")


def _part(path: Path, rows: list[tuple[str, str, str, int]]) -> None:
    frame = pd.DataFrame(rows, columns=["path", "sha256", "model_version", "t"])
    frame["model_name"] = "m"
    frame["scored_at"] = pd.to_datetime(frame.pop("t"), unit="s", utc=True)
    frame["decision"] = "real"
    frame["error"] = None
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def test_resume_bookkeeping_leaves_one_row_per_input(tmp_path: Path):
    run = results.run_uri(str(tmp_path), "r")
    Path(run).mkdir(parents=True)
    _part(Path(run) / "a.parquet", [("x", "s1", "1", 1), ("y", "s2", "1", 1), ("gone", "s9", "1", 1)])
    _part(Path(run) / "b.parquet", [("y", "s2b", "1", 5), ("z", "s3", "2", 2)])
    (Path(run) / "c.parquet").write_bytes(b"PAR1 interrupted write")  # no footer
    rows, broken = results.read_rows(run, results.KEY_COLUMNS)
    assert [Path(b).name for b in broken] == ["c.parquet"] and len(rows) == 5
    assert results.done_shas(rows, "m", "1") == {"x": "s1", "y": "s2b", "gone": "s9"}
    final, fixes = results.consolidate(run, {"x", "y", "z"})
    assert sorted(final["path"]) == ["x", "y", "z"]
    assert fixes == {"stale_rows_dropped": 2, "files_rewritten": 1, "broken_files_removed": 1}
    again, _ = results.read_rows(run, results.KEY_COLUMNS)
    assert sorted(zip(again["path"], again["sha256"], strict=True)) == [("x", "s1"), ("y", "s2b"), ("z", "s3")]
    assert not any(Path(run).glob(".*tmp"))
    results.write_success(run, {"counts": {"rows": 3}})
    assert results.read_success(run) == {"counts": {"rows": 3}}
    results.remove_success(run)
    assert results.read_success(run) is None


def test_output_schema_keeps_the_contract_first():
    carried = pa.schema([("file_name", pa.string()), ("label", pa.int64()), ("error", pa.string()), ("_x", pa.int8())])
    assert output_schema(carried).names == [*CONTRACT_COLUMNS, "file_name", "label"]


def test_decode_limits_come_from_settings(tmp_path: Path):
    settings = load_settings(overrides=["images.max_bytes=10"])
    limits = DecodeLimits.from_settings(settings.images)
    path = _images(tmp_path, n=1)[0]
    out = decode_batch(_table([path]), [_resize(16)], limits)
    assert out.column("error").to_pylist()[0].startswith("too_large")


def test_a_foreign_parquet_file_in_a_run_folder_is_an_error_not_deleted(tmp_path: Path):
    run = results.run_uri(str(tmp_path), "r")
    Path(run).mkdir(parents=True)
    pq.write_table(pa.table({"something": [1]}), Path(run) / "theirs.parquet")
    with pytest.raises(results.ForeignPartError, match="theirs.parquet"):
        results.read_rows(run, results.KEY_COLUMNS)
    assert (Path(run) / "theirs.parquet").exists()
    with pytest.raises(ValueError):
        results.run_uri(str(tmp_path), "../escape")
