import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydetect import storage

pytestmark = [pytest.mark.s3, pytest.mark.ray]


def test_bytes_roundtrip_and_listing_on_moto(s3_bucket: str):
    storage.write_text(f"{s3_bucket}/dir/a.txt", "alpha")
    storage.write_bytes(f"{s3_bucket}/dir/sub/b.bin", b"\x00\x01")
    assert storage.read_text(f"{s3_bucket}/dir/a.txt") == "alpha"
    assert storage.exists(f"{s3_bucket}/dir/sub/b.bin")
    assert not storage.exists(f"{s3_bucket}/dir/missing")
    assert storage.list_files(f"{s3_bucket}/dir") == [f"{s3_bucket}/dir/a.txt", f"{s3_bucket}/dir/sub/b.bin"]


def test_parquet_written_through_storage_is_read_by_ray_data(s3_bucket: str, ray_cluster: None):
    import ray

    table = pa.table({"path": [f"img_{i}.jpg" for i in range(50)], "prob_ai": [i / 50 for i in range(50)]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    uri = f"{s3_bucket}/predictions/part-0.parquet"
    storage.write_bytes(uri, buffer.getvalue())

    fs, path = storage.pyarrow_fs(uri)
    dataset = ray.data.read_parquet(path, filesystem=fs)
    rows = dataset.take_all()
    assert len(rows) == 50
    assert sorted(r["path"] for r in rows) == sorted(table.column("path").to_pylist())
    # The workers find the endpoint themselves (inherited AWS_* variables), not only the driver.
    remote = ray.data.from_items([{"uri": uri}]).map(lambda row: {"n": len(storage.read_bytes(row["uri"]))})
    assert remote.take_all() == [{"n": len(buffer.getvalue())}]
